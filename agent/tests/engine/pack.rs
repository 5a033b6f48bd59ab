//! `fleetup-agent pack` refuses a manifest that would fail during the outage, naming the
//! entries: two entries for one path (`./lib/x` beside `lib/x`), two entries with one source.

use std::process::Command;

fn pack_with(extra: &str) -> (Option<i32>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fleetup_e2e::copy_tree(&fleetup_e2e::workspace_root().join("examples/sample-rollup"), &src).unwrap();
    let manifest = src.join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap() + extra;
    std::fs::write(&manifest, text).unwrap();
    let bin = env!("CARGO_BIN_EXE_fleetup-agent");
    let key = tmp.path().join("key");
    assert!(Command::new(bin).arg("keygen").arg("--out").arg(&key).status().unwrap().success());
    let out = Command::new(bin)
        .arg("pack")
        .arg(&src)
        .arg("--key")
        .arg(&key)
        .arg("--out")
        .arg(tmp.path().join("p"))
        .output()
        .unwrap();
    assert!(!tmp.path().join("p").exists() || out.status.success(), "a refused pack left a package");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn pack_refuses_duplicate_entries_naming_them() {
    let (code, err) = pack_with("\n[[files]]\npath = \"./lib/demo\"\naction = \"tree\"\n");
    assert_eq!(code, Some(1), "{err}");
    for want in ["files[1].path", "'./lib/demo'", "files[0] ('lib/demo')"] {
        assert!(err.contains(want), "stderr does not say {want}: {err}");
    }
    let (code, err) = pack_with(
        "\n[[files]]\npath = \"etc/copy.txt\"\naction = \"add\"\nsource = \"payload/lib/demo/feature-x.txt\"\n\n\
         [[files]]\npath = \"etc/copy2.txt\"\naction = \"add\"\nsource = \"payload/lib/demo/feature-x.txt\"\n",
    );
    assert_eq!(code, Some(1), "{err}");
    for want in ["files[2].source", "etc/copy2.txt", "files[1] ('etc/copy.txt')"] {
        assert!(err.contains(want), "stderr does not say {want}: {err}");
    }
}
