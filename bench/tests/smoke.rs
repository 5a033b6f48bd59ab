//! Smoke test: a `--size tiny` coordinator run against a real server finishes its rollouts
//! (the P1 wave with the report flood and paced, P2) with every event recorded, and the engine figure produces a sane summary. It asserts
//! outcomes only; no timing is pass/fail.

use fleetup_bench::harness::Backend;
use fleetup_bench::{Bins, Size, Transport, coordinator, engine};
use serde_json::json;

fn bins() -> Bins {
    for b in ["fleetup-agent", "fleetup-demo-service"] {
        fleetup_e2e::binary(b);
    }
    let server = fleetup_e2e::binary("fleetup-server");
    Bins { dir: server.parent().expect("bin dir").to_path_buf() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_coordinator_run_finishes_its_rollouts() {
    tiny_coordinator_run(Transport::H1).await;
}

/// The same run with agents multiplexed over HTTP/2 connections: the coordinator answers
/// cleartext HTTP/2 and every agent still gets its own job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_coordinator_run_over_http2_finishes_its_rollouts() {
    tiny_coordinator_run(Transport::H2).await;
}

async fn tiny_coordinator_run(transport: Transport) {
    let bins = bins();
    let work = tempfile::tempdir().unwrap();
    // Paced at 2x the recording: about a second per install.
    let sz = coordinator::CoordSize { pace_scale: 2.0, ..coordinator::CoordSize::of(Size::Tiny) };
    let v = coordinator::run(&bins, Backend::Sqlite, sz, transport, work.path()).await.expect("tiny run");
    assert_eq!(v["p1"]["transport"], json!(transport.as_str()), "{v}");
    assert_eq!(v["p1"]["agents_held_client"], json!(sz.agents), "{v}");
    assert_eq!(v["p1"]["wave_assigned"], json!(sz.wave), "{v}");
    assert_eq!(v["p1"]["wave_counts"], json!({ "succeeded": sz.wave }), "{v}");
    let per_job = fleetup_bench::sim::event_template().len();
    // The paced wave: every agent got its job and delivered every event of its install.
    let paced = &v["p1"]["wave_paced"];
    assert_eq!(paced["wave_assigned"], json!(sz.wave), "{v}");
    assert_eq!(paced["wave_counts"], json!({ "succeeded": sz.wave }), "{v}");
    assert_eq!(paced["events"], json!(sz.wave * per_job), "every paced event recorded once: {v}");
    assert_eq!(paced["events_expected"], json!(sz.wave * per_job), "{v}");
    assert_eq!(paced["report_errors"], json!(0), "{v}");
    assert!(paced["wave_p99_secs"].as_f64().is_some() && v["p1"]["wave_p99_secs"].as_f64().is_some(), "{v}");
    assert_eq!(v["p2"]["counts"], json!({ "succeeded": sz.p2_jobs }), "{v}");
    assert_eq!(v["p2"]["events"], json!(sz.p2_jobs * per_job), "every event recorded once: {v}");
    assert_eq!(v["p2"]["report_errors"], json!(0), "{v}");
    // P3 records a part that fails as {"error": …} and goes on: every part must have a figure.
    for view in ["full", "summary"] {
        let walk = &v["p3"][format!("{view}_limit_500")];
        assert_eq!(walk["paging"], json!("cursor"), "{view}: {v}");
        assert!(walk["bytes_all_pages"].as_u64().is_some_and(|b| b > 0), "{view}: {v}");
    }
    for part in ["page", "grid_first", "grid_last", "panels", "overview", "overview_png", "agents"] {
        assert!(v["p3"]["html"][part]["bytes"].as_u64().is_some_and(|b| b > 0), "dashboard {part}: {v}");
    }
}

#[test]
fn tiny_engine_outage_is_part_of_the_install() {
    let bins = bins();
    let work = tempfile::tempdir().unwrap();
    let v = engine::p5(&bins, Size::Tiny, work.path()).expect("tiny p5");
    let outage = v["outage_ms_median"].as_f64().unwrap();
    let total = v["total_ms_median"].as_f64().unwrap();
    assert!(outage > 0.0 && outage <= total, "{v}");
}
