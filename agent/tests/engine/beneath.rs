//! Nothing is written outside the install root: symlinks on the way, web app links that
//! point out once deployed, all refused in check-system before anything changes.

use crate::support::{Fixture, crl_stub_ok, tree};
use fleetup_agent::engine::AutoDecider;
use fleetup_proto::{InstallOutcome, PhaseId};
use std::sync::Arc;

/// Runs the install and checks it stopped in check-system with every `want` in its error,
/// the root and the service untouched.
fn assert_refused_in_check_system(fx: &Fixture, want: &[&str]) {
    let before = tree(&fx.root);
    let pid = fx.service_pid();
    let (summary, _) = fx.install_lib(Arc::new(AutoDecider::default()), |_, _| {});
    assert_eq!(summary.outcome, InstallOutcome::Failed, "{summary:?}");
    assert_eq!(summary.failed_phase, Some(PhaseId::CheckSystem), "{summary:?}");
    let error = summary.error.unwrap_or_default();
    for w in want {
        assert!(error.contains(w), "the error does not say '{w}': {error}");
    }
    assert_eq!(tree(&fx.root), before);
    assert_eq!(fx.service_pid(), pid, "the service was restarted");
    assert!(fx.leftover_staging().is_empty());
}

#[test]
fn an_add_through_a_symlink_that_leads_out_of_the_root_is_refused() {
    let fx = Fixture::with_payload(
        &crl_stub_ok(),
        |t| t + "\n[[files]]\npath = \"lib/outlink/evil.txt\"\naction = \"add\"\n",
        &[("lib/outlink/evil.txt", "written outside\n")],
    );
    let outside = fx.tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, fx.root.join("lib/outlink")).unwrap();
    assert_refused_in_check_system(&fx, &["lib/outlink/evil.txt", "outside the install root"]);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "something was written outside the root");
}

#[test]
fn a_symlink_inside_the_root_that_stays_inside_is_written_through() {
    let fx = Fixture::with_payload(
        &crl_stub_ok(),
        |t| t + "\n[[files]]\npath = \"lib/inlink/ok.txt\"\naction = \"add\"\n",
        &[("lib/inlink/ok.txt", "inside\n")],
    );
    std::os::unix::fs::symlink("demo", fx.root.join("lib/inlink")).unwrap();
    let (summary, _) = fx.install_lib(Arc::new(AutoDecider::default()), |_, _| {});
    assert_eq!(summary.outcome, InstallOutcome::Succeeded, "{summary:?}");
    assert_eq!(std::fs::read_to_string(fx.root.join("lib/demo/ok.txt")).unwrap(), "inside\n");
}

#[test]
fn a_web_app_link_that_points_out_once_deployed_is_refused() {
    let fx = Fixture::with_source(
        &crl_stub_ok(),
        |t| t.replace("source = \"webapp\"", "source = \"a/b/c/web\""),
        |src| {
            // Legal in the package (it stays inside it), outside the root once deployed.
            std::fs::create_dir_all(src.join("a/b/c")).unwrap();
            std::fs::rename(src.join("webapp"), src.join("a/b/c/web")).unwrap();
            std::os::unix::fs::symlink("../../../../payload", src.join("a/b/c/web/out")).unwrap();
        },
    );
    assert_refused_in_check_system(
        &fx,
        &["web app link a/b/c/web/out -> ../../../../payload", "stay inside the web app"],
    );
}
