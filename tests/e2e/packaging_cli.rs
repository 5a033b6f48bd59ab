//! A packager's session: keygen, pack, verify — through the real `fleetup-agent` binary.

use fleetup_e2e::{binary, workspace_root};
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(binary("fleetup-agent")).args(args).output().expect("running fleetup-agent")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn keygen_pack_verify_and_refuse_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("release.key");
    let key_s = key.to_str().unwrap();
    let out = agent(&["keygen", "--out", key_s]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let public = format!("{key_s}.pub");
    assert!(std::fs::read_to_string(&public).unwrap().starts_with("fleetup-public-key-v1 "));
    // keygen never overwrites a key.
    assert!(!agent(&["keygen", "--out", key_s]).status.success());

    let pkg = dir.path().join("demo-1.1.0.fup");
    let pkg_s = pkg.to_str().unwrap();
    let sample = workspace_root().join("examples/sample-rollup");
    let out = agent(&["pack", sample.to_str().unwrap(), "--key", key_s, "--out", pkg_s]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("demo-service 1.1.0"), "{}", text(&out));

    let out = agent(&["verify", pkg_s, "--trust", &public]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("OK"), "{}", text(&out));

    // A flipped byte in the middle of the content.
    let mut bytes = std::fs::read(&pkg).unwrap();
    let at = bytes.len() - 2000;
    bytes[at] ^= 0x40;
    let tampered = dir.path().join("tampered.fup");
    std::fs::write(&tampered, &bytes).unwrap();
    let out = agent(&["verify", tampered.to_str().unwrap(), "--trust", &public]);
    assert!(!out.status.success());
    assert!(text(&out).contains("integrity check failed"), "{}", text(&out));

    // Another key.
    let other = dir.path().join("other.key");
    assert!(agent(&["keygen", "--out", other.to_str().unwrap()]).status.success());
    let out = agent(&["verify", pkg_s, "--trust", &format!("{}.pub", other.display())]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not trusted"), "{}", text(&out));

    // Not a package at all.
    let junk = dir.path().join("junk.fup");
    std::fs::write(&junk, b"hello").unwrap();
    let out = agent(&["verify", junk.to_str().unwrap(), "--trust", &public]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not a fleetup package"), "{}", text(&out));
}

#[test]
fn pack_refuses_a_bad_manifest_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("rollup");
    fleetup_e2e::copy_tree(&workspace_root().join("examples/sample-rollup"), &src).unwrap();
    let manifest = std::fs::read_to_string(src.join("manifest.toml")).unwrap();
    std::fs::write(src.join("manifest.toml"), manifest.replace("path = \"lib/demo\"", "path = \"../../etc/passwd\""))
        .unwrap();
    let key = dir.path().join("k");
    assert!(agent(&["keygen", "--out", key.to_str().unwrap()]).status.success());
    let out = agent(&[
        "pack",
        src.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        dir.path().join("x.fup").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("files[0].path"), "{}", text(&out));
    assert!(!dir.path().join("x.fup").exists(), "no half-written package");
}
