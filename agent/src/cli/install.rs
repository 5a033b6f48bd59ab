//! `fleetup-agent install` and `fleetup-agent recover`: the engine on the command line.
//!
//! Output is either one JSON event per line (`--json`) or a progress line per phase in
//! the seeds' wording, saying what a cancel would do right now. Decisions are asked on
//! the terminal, answered by `--yes`, or (no terminal, no `--yes`) answered with the
//! safe choice. On a terminal, typing `c` + Enter requests a cancel.

use super::prompt::TerminalDecider;
use super::signals::SignalWatch;
use crate::engine::{AutoDecider, BackendKind, CrlRemediation, Engine, EventSink, InstallRequest, ScriptedDecider};
use anyhow::Context as _;
use fleetup_proto::{DecisionAnswer, EngineEvent, InstallOutcome, InstallSummary, PhaseStatus};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Options of `install`, as parsed by clap.
#[derive(Debug, Clone)]
pub struct InstallArgs {
    /// Package file.
    pub package: PathBuf,
    /// Install root.
    pub root: PathBuf,
    /// Trusted keys.
    pub trust: Vec<PathBuf>,
    /// State dir.
    pub state_dir: PathBuf,
    /// `--yes`.
    pub yes: bool,
    /// `--json`.
    pub json: bool,
    /// Backend.
    pub backend: BackendKind,
    /// Hosts file.
    pub hosts_file: PathBuf,
    /// CRL remediation.
    pub crl_remediation: CrlRemediation,
    /// `--var k=v`.
    pub vars: Vec<String>,
    /// `--device-class`.
    pub device_class: Option<String>,
    /// `--allow-downgrade`.
    pub allow_downgrade: bool,
}

/// Prints events as JSON lines.
struct JsonSink;

impl EventSink for JsonSink {
    fn emit(&self, event: &EngineEvent) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", serde_json::to_string(event).expect("events serialise"));
        let _ = out.flush();
    }
}

/// A progress line per phase (a spinner on a terminal, plain lines otherwise).
struct HumanSink {
    /// The current phase's spinner; shared with the prompt, which suspends it.
    bar: Arc<Mutex<Option<ProgressBar>>>,
    tty: bool,
}

impl EventSink for HumanSink {
    fn emit(&self, ev: &EngineEvent) {
        let mut bar = self.bar.lock().expect("lock");
        let n = ev.phase.number().map_or_else(|| "--".to_owned(), |n| format!("{n:>2}/12"));
        let line = format!("[{n}] {:<40} {:<9} {}", ev.phase.title(), ev.status.as_str(), ev.message);
        if ev.status == PhaseStatus::Running && ev.data.get("number").is_some() {
            let cancel = ev.data.get("cancel_effect").and_then(|v| v.as_str()).unwrap_or("");
            if self.tty {
                let pb = ProgressBar::new_spinner();
                pb.set_style(ProgressStyle::with_template("{spinner} {prefix} {wide_msg}").expect("template"));
                pb.set_prefix(format!("[{n}] {}", ev.phase.title()));
                pb.set_message(format!("({cancel}; type c + Enter to cancel)"));
                pb.enable_steady_tick(Duration::from_millis(120));
                *bar = Some(pb);
            } else {
                println!("[{n}] {} ... ({cancel})", ev.phase.title());
            }
            return;
        }
        match bar.as_ref() {
            Some(pb) if ev.status == PhaseStatus::Running && ev.data.get("progress").is_some() => {
                show_progress(pb, &ev.data["progress"], &ev.message);
            }
            Some(pb) if ev.status == PhaseStatus::Running => pb.set_message(ev.message.clone()),
            Some(pb) if ev.status.is_terminal() => {
                pb.finish_and_clear();
                println!("{line}");
                *bar = None;
            }
            Some(pb) => pb.println(line),
            None => println!("{line}"),
        }
        if let Some(s) = ev.summary() {
            print_summary(&s);
        }
    }
}

/// Turns the phase's spinner into a bar: bytes when the event counts them (staging),
/// otherwise steps; indicatif derives the rate and the ETA from the positions.
fn show_progress(pb: &ProgressBar, progress: &serde_json::Value, message: &str) {
    let n = |k: &str| progress.get(k).and_then(serde_json::Value::as_u64);
    let (template, pos, len) = match (n("bytes_done"), n("bytes_total")) {
        (Some(done), Some(total)) if total > 0 => {
            ("{spinner} {prefix} [{bar:30}] {bytes}/{total_bytes}, ETA {eta} {wide_msg}", done, total)
        }
        _ => (
            "{spinner} {prefix} [{bar:30}] {pos}/{len}, ETA {eta} {wide_msg}",
            n("done").unwrap_or(0),
            n("total").unwrap_or(0),
        ),
    };
    pb.set_style(ProgressStyle::with_template(template).expect("template").progress_chars("=> "));
    pb.set_length(len);
    pb.set_position(pos);
    pb.set_message(message.to_owned());
}

fn print_summary(s: &InstallSummary) {
    println!("\noutcome: {}  (outage {} ms, total {} ms)", s.outcome, s.outage_ms, s.total_ms);
    for (p, ms) in &s.phase_ms {
        println!("  {:<16} {ms:>7} ms", p.as_str());
    }
    if s.restart_required {
        println!("restart required: processes still hold replaced files");
    }
    if let Some(e) = &s.error {
        println!("reason: {e}");
    }
}

pub(crate) fn parse_vars(vars: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    vars.iter()
        .map(|v| {
            let (k, val) = v.split_once('=').with_context(|| format!("--var {v}: expected name=value"))?;
            anyhow::ensure!(!k.is_empty(), "--var {v}: the name is empty");
            anyhow::ensure!(
                !crate::engine::BUILT_IN_VARS.contains(&k),
                "--var {k}: '{k}' is a built-in variable and cannot be set"
            );
            Ok((k.to_owned(), val.to_owned()))
        })
        .collect()
}

fn exit_for(s: &InstallSummary) -> ExitCode {
    match s.outcome {
        InstallOutcome::Succeeded | InstallOutcome::AlreadyInstalled => ExitCode::SUCCESS,
        InstallOutcome::RecoveryRequired => ExitCode::from(3),
        _ if s.error.as_deref().is_some_and(|e| e.starts_with(crate::engine::RETRY_LATER)) => {
            ExitCode::from(crate::engine::RETRY_LATER_EXIT as u8)
        }
        _ => ExitCode::FAILURE,
    }
}

fn engine_for(json: bool, yes: bool) -> (Engine, Option<Arc<TerminalDecider>>) {
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let human = Arc::new(HumanSink { bar: Arc::new(Mutex::new(None)), tty: tty && !json });
    let sink: Arc<dyn EventSink> = if json { Arc::new(JsonSink) } else { human.clone() };
    if yes {
        return (Engine::new(Arc::new(AutoDecider::default()), sink), None);
    }
    if !tty {
        let d = ScriptedDecider::new(|req| {
            eprintln!("no terminal to ask '{}' and no --yes: answering with the safe choice", req.message);
            if req.options.contains(&DecisionAnswer::Exit) { DecisionAnswer::Exit } else { DecisionAnswer::Cancel }
        });
        return (Engine::new(Arc::new(d), sink), None);
    }
    let decider = Arc::new(TerminalDecider::new(human.bar.clone()));
    (Engine::new(decider.clone(), sink), Some(decider))
}

/// `fleetup-agent install`
pub fn install(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let trusted = crate::packaging::read_trusted(&args.trust)?;
    let vars = parse_vars(&args.vars)?;
    SignalWatch::block()?;
    let (engine, stdin) = engine_for(args.json, args.yes);
    let signals = SignalWatch::start(engine.cancel_handle())?;
    // An interrupted install is finished first, and reported as its own (one) outcome.
    if let Some(s) = engine.recover(&args.state_dir)? {
        eprintln!(
            "an interrupted install of {} {} was found in {} and finished: {}. Run the command again to install.",
            s.rollup,
            s.version,
            args.state_dir.display(),
            s.outcome
        );
        return Ok(exit_for(&s));
    }
    if let Some(terminal) = stdin {
        terminal.read_stdin(engine.cancel_handle());
    }
    let req = InstallRequest {
        package: args.package,
        root: args.root,
        state_dir: args.state_dir,
        trusted,
        vars,
        backend: args.backend,
        hosts_file: args.hosts_file,
        crl_remediation: args.crl_remediation,
        device_class: args.device_class,
        allow_downgrade: args.allow_downgrade,
    };
    let summary = engine.install(&req)?;
    Ok(signals.exit_code(exit_for(&summary), summary.outcome.is_success()))
}

/// `fleetup-agent recover`
pub fn recover(state_dir: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    SignalWatch::block()?;
    let (engine, _) = engine_for(json, true);
    // A recovery is never cancelled (it is the way back to one state), but a signal is
    // still answered with a line instead of a kill halfway through.
    let signals = SignalWatch::start(engine.cancel_handle())?;
    if let Some(s) = engine.recover(state_dir)? {
        return Ok(signals.exit_code(exit_for(&s), s.outcome.is_success()));
    }
    eprintln!("nothing to recover in {}", state_dir.display());
    Ok(ExitCode::SUCCESS)
}
