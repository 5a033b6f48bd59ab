//! CRL reachability probes and the seeds' hosts-file workaround.
//!
//! The seeds' installs stalled 40–60 minutes because revocation checks waited on an
//! unreachable CRL host. Here every endpoint is probed in parallel, each bounded by the
//! manifest's short deadline, so the worst case is one deadline, never minutes. The
//! opt-in remediation maps unreachable CRL host names to 127.0.0.1 in the given hosts
//! file for the install only (so the check fails at once), and restores the file byte
//! for byte on every path out.

use super::http;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The result of probing one endpoint.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The URL probed.
    pub url: String,
    /// The host name in it.
    pub host: String,
    /// `None` when reachable; otherwise why not.
    pub problem: Option<String>,
    /// How long the probe took.
    pub elapsed: Duration,
}

/// Probes every URL in parallel; the whole call returns within `deadline` (+ a little).
pub fn probe_all(urls: &[String], hosts_file: &Path, deadline: Duration) -> Vec<Probe> {
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    for (i, url) in urls.iter().enumerate() {
        let tx = tx.clone();
        let url = url.clone();
        let hosts_file = hosts_file.to_path_buf();
        std::thread::spawn(move || {
            let t = Instant::now();
            let (host, problem) = match http::parse_url(&url) {
                Err(e) => (String::new(), Some(e)),
                Ok(u) => {
                    let p = http::resolve(&u, &hosts_file).and_then(|addr| {
                        if u.scheme == "https" {
                            std::net::TcpStream::connect_timeout(&addr, deadline)
                                .map(drop)
                                .map_err(|e| format!("connect to {addr}: {e}"))
                        } else {
                            http::get(addr, &u, deadline).map(drop)
                        }
                    });
                    (u.host, p.err())
                }
            };
            let _ = tx.send((i, Probe { url, host, problem, elapsed: t.elapsed() }));
        });
    }
    drop(tx);
    let mut out: Vec<Option<Probe>> = vec![None; urls.len()];
    let hard = deadline + Duration::from_millis(500);
    while out.iter().any(Option::is_none) {
        let Some(left) = hard.checked_sub(start.elapsed()) else { break };
        match rx.recv_timeout(left) {
            Ok((i, p)) => out[i] = Some(p),
            Err(_) => break,
        }
    }
    out.into_iter()
        .zip(urls)
        .map(|(p, url)| {
            p.unwrap_or_else(|| Probe {
                url: url.clone(),
                host: http::parse_url(url).map(|u| u.host).unwrap_or_default(),
                problem: Some(format!("no answer within {} ms", deadline.as_millis())),
                elapsed: start.elapsed(),
            })
        })
        .collect()
}

/// The copyable remediation text for the unreachable endpoints `bad` (all of them in one
/// text: the operator answers one question), naming the hosts file this install uses.
pub fn remediation(bad: &[Probe], hosts_file: &std::path::Path) -> String {
    use std::fmt::Write as _;
    let mut names: Vec<&str> = Vec::new();
    let mut ips: Vec<&str> = Vec::new();
    for p in bad {
        let list = if p.host.parse::<std::net::IpAddr>().is_ok() { &mut ips } else { &mut names };
        if !p.host.is_empty() && !list.contains(&p.host.as_str()) {
            list.push(&p.host);
        }
    }
    let mut text = String::from("These certificate revocation list endpoints cannot be reached from this server:\n");
    for p in bad {
        let _ = writeln!(text, "    {} ({})", p.url, p.problem.as_deref().unwrap_or("?"));
    }
    text.push_str("Software that checks revocation may stall for minutes while it waits.\n");
    let all: Vec<&str> = names.iter().chain(&ips).copied().collect();
    let _ = write!(text, "Fix: allow this server to reach {} through the firewall or proxy", all.join(", "));
    if !names.is_empty() {
        let _ = write!(
            text,
            ",\nor, for this install only, make the lookup fail fast by adding these lines to {} (remove them afterwards):\n",
            hosts_file.display()
        );
        for h in &names {
            let _ = writeln!(text, "    127.0.0.1 {h}");
        }
        text.push_str("fleetup can do this for you and restore the file afterwards: --crl-remediation hosts-file");
    }
    if !ips.is_empty() {
        let _ = write!(
            text,
            "\n({} {} an IP address, so a hosts-file entry cannot help; open the firewall instead)",
            ips.join(", "),
            if ips.len() == 1 { "is" } else { "are" }
        );
    }
    text
}

/// The hosts-file text with `127.0.0.1 <host>` lines prepended (first match wins, so
/// they take precedence over existing entries, which are left as they were).
pub fn remediated_hosts(original: &[u8], hosts: &[String], install_id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for h in hosts {
        out.extend_from_slice(
            format!("127.0.0.1 {h} # fleetup CRL remediation, install {install_id}; removed afterwards\n").as_bytes(),
        );
    }
    out.extend_from_slice(original);
    out
}

/// Writes `bytes` into the file in place (truncate + write + fsync): the hosts file may
/// be a bind mount (containers), where a rename over it fails.
pub fn write_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
