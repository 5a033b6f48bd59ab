//! The demo service answers its version from the install root it was started on.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn health_reports_version_and_unhealthy_versions_fail() {
    let root = tempfile_dir();
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/../base-1.0");
    copy_dir(std::path::Path::new(base), &root);
    for (conf, expect) in [("", "200 OK"), ("unhealthy_versions = 1.0.0\n", "503")] {
        let conf_path = root.join("etc/demo.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(conf);
        std::fs::write(&conf_path, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_fleetup-demo-service"))
            .args(["--listen", "127.0.0.1:0", "--root"])
            .arg(&root)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().rsplit(' ').next().unwrap().to_owned();
        let health = get(&addr, "/health");
        let index = get(&addr, "/");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(health.contains(expect), "{health}");
        assert!(health.contains("\"version\":\"1.0.0\""), "{health}");
        assert!(index.contains("Demo web app 1.0.0"), "{index}");
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fleetup-demo-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let ft = entry.file_type().unwrap();
        if ft.is_dir() {
            copy_dir(&entry.path(), &target);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
