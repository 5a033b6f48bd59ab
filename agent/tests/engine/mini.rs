//! A small rollup without services, for tests about what the engine decides from the
//! manifest and its records (versions, targets, entry kinds): each install is the real
//! `fleetup-agent install` (a new process each time, on one root and state dir).

use crate::support::{parse_events, tree};
use fleetup_proto::package::pack_dir;
use fleetup_proto::{EngineEvent, InstallSummary, SecretKey};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

pub struct Mini {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub state: PathBuf,
    key: SecretKey,
    key_pub: PathBuf,
    packages: std::cell::Cell<u32>,
}

/// What one install printed and how it ended.
pub struct Ran {
    pub status: ExitStatus,
    pub events: Vec<EngineEvent>,
    pub stderr: String,
}

impl Ran {
    pub fn summary(&self) -> InstallSummary {
        self.events
            .iter()
            .find_map(EngineEvent::summary)
            .unwrap_or_else(|| panic!("no summary; status {:?}, stderr: {}", self.status, self.stderr))
    }

    /// The message of the final event.
    pub fn last_message(&self) -> &str {
        &self.events.last().expect("events").message
    }
}

impl Mini {
    /// An empty root (with `lib/`) and state dir.
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let (root, state) = (tmp.path().join("root"), tmp.path().join("state"));
        Self::with_dirs(tmp, root, state)
    }

    /// [`Mini::new`] with the root and the state dir at the given places (inside `tmp`).
    pub fn with_dirs(tmp: tempfile::TempDir, root: PathBuf, state: PathBuf) -> Self {
        std::fs::create_dir_all(root.join("lib")).unwrap();
        let key = SecretKey::generate().unwrap();
        let key_pub = tmp.path().join("key.pub");
        std::fs::write(&key_pub, key.public().to_text()).unwrap();
        Self { tmp, root, state, key, key_pub, packages: std::cell::Cell::new(0) }
    }

    /// Packs a rollup `mini` `version`: `lib/app` as a tree holding `VERSION`, plus the
    /// extra manifest text and payload files.
    pub fn package_with(&self, version: &str, extra_manifest: &str, files: &[(&str, &str)]) -> PathBuf {
        let n = self.packages.get() + 1;
        self.packages.set(n);
        let src = self.tmp.path().join(format!("src-{n}"));
        let app = src.join("payload/lib/app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("VERSION"), format!("{version}\n")).unwrap();
        for (path, content) in files {
            let p = src.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        let manifest = format!(
            "[rollup]\nname = \"mini\"\nversion = \"{version}\"\n\n[check]\nfree_space_margin_mb = 1\n\n{extra_manifest}\n\n\
             [[files]]\npath = \"lib/app\"\naction = \"tree\"\n"
        );
        std::fs::write(src.join("manifest.toml"), manifest).unwrap();
        let out = self.tmp.path().join(format!("mini-{version}-{n}.fleetup"));
        pack_dir(&src, &self.key, &out).unwrap();
        out
    }

    /// [`Mini::package_with`] with nothing extra.
    pub fn package(&self, version: &str) -> PathBuf {
        self.package_with(version, "", &[])
    }

    /// Runs `fleetup-agent install --json --yes PACKAGE` with `args`.
    pub fn install(&self, package: &Path, args: &[&str]) -> Ran {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetup-agent"))
            .arg("install")
            .arg(package)
            .arg("--root")
            .arg(&self.root)
            .arg("--trust")
            .arg(&self.key_pub)
            .arg("--state-dir")
            .arg(&self.state)
            .args(["--services-backend", "exec", "--json", "--yes"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        Ran {
            status: out.status,
            events: parse_events(&out.stdout),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The version file the last successful install put in place.
    pub fn version(&self) -> String {
        std::fs::read_to_string(self.root.join("lib/app/VERSION")).unwrap_or_default().trim().to_owned()
    }

    /// The root's content.
    pub fn tree(&self) -> BTreeMap<String, String> {
        tree(&self.root)
    }

    /// Staging directories left beside the root.
    pub fn leftover_staging(&self) -> usize {
        std::fs::read_dir(self.root.parent().unwrap())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".root.fleetup-"))
            .count()
    }
}
