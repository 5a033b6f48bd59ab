//! Entry kinds beyond plain files: owner and group, symlinks, YAML config patches; each
//! refused in check-system, before anything changes, when it cannot be done safely.

use crate::mini::Mini;
use fleetup_proto::{InstallOutcome, PhaseId};
use std::os::unix::fs::MetadataExt as _;

fn refused(m: &Mini, pkg: &std::path::Path, want: &[&str]) {
    let before = m.tree();
    let ran = m.install(pkg, &[]);
    let s = ran.summary();
    assert_eq!((s.outcome, s.failed_phase), (InstallOutcome::Failed, Some(PhaseId::CheckSystem)), "{s:?}");
    let error = s.error.unwrap_or_default();
    for w in want {
        assert!(error.contains(w), "the error does not say '{w}': {error}");
    }
    assert_eq!(m.tree(), before, "the root changed");
    assert_eq!(m.leftover_staging(), 0);
}

#[test]
fn owner_and_group_are_set_on_files_and_trees_by_name_or_number() {
    let m = Mini::new();
    let pkg = m.package_with(
        "1.0.0",
        "[[files]]\npath = \"etc/app.conf\"\naction = \"add\"\nowner = \"nobody\"\ngroup = \"nogroup\"\n\n\
         [[files]]\npath = \"lib/data\"\naction = \"tree\"\nowner = \"1234\"\ngroup = \"4321\"\n",
        &[
            ("payload/etc/app.conf", "x = 1\n"),
            ("payload/lib/data/a.txt", "a\n"),
            ("payload/lib/data/sub/b.txt", "b\n"),
        ],
    );
    let ran = m.install(&pkg, &[]);
    assert_eq!(ran.summary().outcome, InstallOutcome::Succeeded, "{}", ran.stderr);
    let conf = std::fs::metadata(m.root.join("etc/app.conf")).unwrap();
    assert_eq!((conf.uid(), conf.gid()), (65534, 65534), "nobody:nogroup");
    for f in ["lib/data/a.txt", "lib/data/sub/b.txt"] {
        let md = std::fs::metadata(m.root.join(f)).unwrap();
        assert_eq!((md.uid(), md.gid()), (1234, 4321), "{f}");
    }
    // Entries without an owner stay the engine's.
    assert_eq!(std::fs::metadata(m.root.join("lib/app/VERSION")).unwrap().uid(), nix::unistd::geteuid().as_raw());
}

#[test]
fn an_unknown_owner_or_group_is_refused_in_check_system() {
    let m = Mini::new();
    let pkg = m.package_with(
        "1.0.0",
        "[[files]]\npath = \"etc/app.conf\"\naction = \"add\"\nowner = \"no-such-user-x\"\ngroup = \"no-such-group-x\"\n",
        &[("payload/etc/app.conf", "x = 1\n")],
    );
    refused(
        &m,
        &pkg,
        &[
            "owner 'no-such-user-x' is not a user on this server",
            "group 'no-such-group-x' is not a group",
            "etc/app.conf",
        ],
    );
}

#[test]
fn a_symlink_entry_creates_or_replaces_a_link_and_is_rolled_back() {
    let m = Mini::new();
    std::fs::create_dir_all(m.root.join("lib/releases/1.0")).unwrap();
    std::fs::create_dir_all(m.root.join("lib/releases/2.0")).unwrap();
    std::os::unix::fs::symlink("releases/1.0", m.root.join("lib/current")).unwrap();
    std::fs::create_dir_all(m.root.join("bin")).unwrap();
    std::fs::write(m.root.join("bin/tool"), "old tool, a file\n").unwrap();
    let links = "[[files]]\npath = \"lib/current\"\naction = \"symlink\"\ntarget = \"releases/2.0\"\n\n\
                 [[files]]\npath = \"bin/tool\"\naction = \"symlink\"\ntarget = \"../lib/current/tool\"\n\n\
                 [[files]]\npath = \"bin/new/app\"\naction = \"symlink\"\ntarget = \"../../lib/app\"\n";
    // First a failing post-install hook: everything is put back as it was.
    let before = m.tree();
    let failing = m.package_with(
        "1.0.0",
        &format!("{links}\n[scripts]\npost_install = [\"scripts/fail.sh\"]\n"),
        &[("scripts/fail.sh", "exit 3\n")],
    );
    let ran = m.install(&failing, &[]);
    assert_eq!(ran.summary().outcome, InstallOutcome::RolledBack, "{}", ran.stderr);
    assert_eq!(m.tree(), before, "the links were not rolled back");
    let ran = m.install(&m.package_with("1.0.0", links, &[]), &[]);
    assert_eq!(ran.summary().outcome, InstallOutcome::Succeeded, "{}", ran.stderr);
    let t = m.tree();
    assert_eq!(t["lib/current"], "link releases/2.0");
    assert_eq!(t["bin/tool"], "link ../lib/current/tool", "a file replaced by a link");
    assert_eq!(t["bin/new/app"], "link ../../lib/app", "a new link in a new directory");
    assert_eq!(std::fs::read_to_string(m.root.join("bin/new/app/VERSION")).unwrap(), "1.0.0\n");
}

#[test]
fn a_symlink_entry_that_would_resolve_outside_the_root_is_refused() {
    let m = Mini::new();
    let outside = m.tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, m.root.join("lib/outlink")).unwrap();
    let pkg = m.package_with(
        "1.0.0",
        "[[files]]\npath = \"lib/a\"\naction = \"symlink\"\ntarget = \"/etc\"\n\n\
         [[files]]\npath = \"lib/b\"\naction = \"symlink\"\ntarget = \"../../x\"\n\n\
         [[files]]\npath = \"lib/c\"\naction = \"symlink\"\ntarget = \"outlink/secret\"\n\n\
         [[files]]\npath = \"lib/d\"\naction = \"symlink\"\ntarget = \"app/../../lib/app\"\n",
        &[],
    );
    refused(
        &m,
        &pkg,
        &[
            "lib/a -> /etc: an absolute target points outside the install root",
            "lib/b -> ../../x: the target climbs out of the install root",
            "lib/c -> outlink/secret: lib/outlink resolves to",
        ],
    );
    // d stays inside: not named.
    let ran = m.install(&pkg, &[]);
    assert!(!ran.summary().error.unwrap_or_default().contains("lib/d"));
}

#[test]
fn yaml_config_patches_set_and_remove_keys() {
    let m = Mini::new();
    std::fs::create_dir_all(m.root.join("etc")).unwrap();
    std::fs::write(m.root.join("etc/app.yaml"), "server:\n  port: 8080\n  debug: true\ncache:\n  size_mb: 64\n")
        .unwrap();
    let pkg = m.package_with(
        "1.0.0",
        "[[config_patches]]\nfile = \"etc/app.yaml\"\nformat = \"yaml\"\nkey = \"server.port\"\nvalue = 9090\n\n\
         [[config_patches]]\nfile = \"etc/app.yaml\"\nformat = \"yaml\"\nkey = \"server.debug\"\nremove = true\n\n\
         [[config_patches]]\nfile = \"etc/app.yaml\"\nformat = \"yaml\"\nkey = \"cache.hosts\"\nvalue = [\"a\", \"b\"]\n",
        &[],
    );
    let ran = m.install(&pkg, &[]);
    assert_eq!(ran.summary().outcome, InstallOutcome::Succeeded, "{}", ran.stderr);
    assert_eq!(
        std::fs::read_to_string(m.root.join("etc/app.yaml")).unwrap(),
        "server:\n  port: 9090\ncache:\n  size_mb: 64\n  hosts:\n    - a\n    - b\n"
    );
    // A key under a missing parent is refused before anything changes.
    let before = std::fs::read(m.root.join("etc/app.yaml")).unwrap();
    let bad = m.package_with(
        "1.0.1",
        "[[config_patches]]\nfile = \"etc/app.yaml\"\nformat = \"yaml\"\nkey = \"nope.x\"\nvalue = 1\n",
        &[],
    );
    let s = m.install(&bad, &[]).summary();
    assert_eq!(s.outcome, InstallOutcome::Failed, "{s:?}");
    assert!(s.error.unwrap_or_default().contains("patching etc/app.yaml: nope does not exist"));
    assert_eq!(std::fs::read(m.root.join("etc/app.yaml")).unwrap(), before);
}
