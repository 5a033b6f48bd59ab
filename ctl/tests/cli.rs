//! fleetupctl as a user runs it, without a coordinator: spec files refused with the file
//! and field named (exit 2), the context file's permissions, the token never sent to a
//! server it was not saved for, completions. The whole rollout against real agents is the
//! e2e test `tests/e2e/ctl.rs`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

fn ctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetupctl"))
        .args(args)
        .env("FLEETUP_CONTEXT", dir.join("ctx/context.toml"))
        .env_remove("FLEETUP_SERVER")
        .env_remove("FLEETUP_TOKEN")
        .env_remove("FLEETUP_CA_CERT")
        .env_remove("FLEETUP_OUTPUT")
        .output()
        .expect("running fleetupctl")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn an_invalid_spec_file_is_refused_with_file_and_field_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rollout.toml");
    std::fs::write(
        &file,
        "name = \"x\"\npackage = \"demo@1.1.0\"\ntargets.hosts = [\"web-1\"]\nwaves = [1, \"150%\"]\n",
    )
    .unwrap();
    // A saved context pointing at nothing: the spec is refused before any request is made.
    let token = dir.path().join("token");
    std::fs::write(&token, "flt_x\n").unwrap();
    let ctx = dir.path().join("ctx/context.toml");
    std::fs::create_dir_all(ctx.parent().unwrap()).unwrap();
    std::fs::write(&ctx, "server = \"http://127.0.0.1:9\"\ntoken = \"flt_x\"\n").unwrap();
    std::fs::set_permissions(&ctx, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = ctl(dir.path(), &["rollout", "apply", file.to_str().unwrap(), "--dry-run"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("rollout.toml: waves[1]: '150%' is not a percentage"), "{e}");

    let o = ctl(dir.path(), &["-o", "json", "rollout", "apply", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_str(stderr(&o).trim()).expect("a JSON error on stderr");
    assert_eq!(v["error"]["exit"], 2);
}

#[test]
fn the_context_file_must_be_private_and_its_token_stays_with_its_server() {
    let dir = tempfile::tempdir().unwrap();
    let o = ctl(dir.path(), &["rollout", "list"]);
    assert_eq!(o.status.code(), Some(4), "no context: {}", stderr(&o));
    assert!(stderr(&o).contains("fleetupctl login"), "{}", stderr(&o));

    let ctx = dir.path().join("ctx/context.toml");
    std::fs::create_dir_all(ctx.parent().unwrap()).unwrap();
    std::fs::write(&ctx, "server = \"http://127.0.0.1:9\"\ntoken = \"flt_secret\"\n").unwrap();
    std::fs::set_permissions(&ctx, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = ctl(dir.path(), &["rollout", "list"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(stderr(&o).contains("chmod 600"), "{}", stderr(&o));

    std::fs::set_permissions(&ctx, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = ctl(dir.path(), &["--server", "http://127.0.0.2:9", "rollout", "list"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("the saved token is for http://127.0.0.1:9"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("flt_secret"));

    // Nothing listens on port 9: a transport error, exit 1.
    let o = ctl(dir.path(), &["rollout", "list"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));

    // Plain http off loopback is refused before the token leaves.
    let o = ctl(dir.path(), &["--server", "http://fleetup.example:8080", "login", "--token-file", "/dev/null"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("unencrypted"), "{}", stderr(&o));

    let o = ctl(dir.path(), &["context"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("http://127.0.0.1:9") && !out.contains("flt_secret"), "{out}");

    let o = ctl(dir.path(), &["logout"]);
    assert!(o.status.success());
    assert!(!ctx.exists());
}

#[test]
fn completions_for_each_shell() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let o = ctl(dir.path(), &["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let script = String::from_utf8_lossy(&o.stdout);
        assert!(script.contains("fleetupctl") && script.contains("apply"), "{shell}: {script}");
    }
}
