//! No Docker engine runs here, so the container files are checked statically: the compose
//! file parses, every service is buildable from paths that exist, every dependency names a
//! service, every `COPY` source exists, and the systemd units are complete.

use fleetup_e2e::workspace_root;
use std::path::Path;
use yaml_rust2::{Yaml, YamlLoader};

fn service_field<'a>(services: &'a Yaml, name: &str, field: &str) -> &'a Yaml {
    let svc = &services[name];
    match &svc[field] {
        Yaml::BadValue => &svc["<<"][field],
        v => v,
    }
}

#[test]
fn compose_file_parses_and_every_path_it_references_exists() {
    let docker = workspace_root().join("docker");
    let text = std::fs::read_to_string(docker.join("compose.yaml")).unwrap();
    let docs = YamlLoader::load_from_str(&text).expect("compose.yaml is valid YAML");
    let compose = &docs[0];
    let services = &compose["services"];
    let names: Vec<String> =
        services.as_hash().expect("a services map").keys().map(|k| k.as_str().unwrap().to_owned()).collect();
    for want in ["server", "postgres", "agent-1", "agent-2", "agent-3"] {
        assert!(names.iter().any(|n| n == want), "compose has no {want} service");
    }
    let volumes = compose["volumes"].as_hash().map(|h| h.keys().filter_map(|k| k.as_str()).collect::<Vec<_>>());
    let mut dockerfiles = Vec::new();
    for name in &names {
        let build = service_field(services, name, "build");
        let image = service_field(services, name, "image");
        assert!(!build.is_badvalue() || image.as_str().is_some(), "{name}: neither build nor image");
        if !build.is_badvalue() {
            let context = docker.join(build["context"].as_str().unwrap_or("."));
            assert!(context.is_dir(), "{name}: build context {} is missing", context.display());
            let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
            assert!(dockerfile.is_file(), "{name}: {} is missing", dockerfile.display());
            dockerfiles.push((context.canonicalize().unwrap(), dockerfile));
        }
        let depends = service_field(services, name, "depends_on");
        let deps: Vec<String> = match depends {
            Yaml::Array(a) => a.iter().filter_map(|d| d.as_str().map(str::to_owned)).collect(),
            Yaml::Hash(h) => h.keys().filter_map(|d| d.as_str().map(str::to_owned)).collect(),
            _ => Vec::new(),
        };
        for d in deps {
            assert!(names.contains(&d), "{name} depends on unknown service {d}");
        }
        if let Yaml::Array(vols) = service_field(services, name, "volumes") {
            for v in vols {
                let source = v.as_str().unwrap().split(':').next().unwrap();
                if source.starts_with('.') || source.starts_with('/') {
                    assert!(docker.join(source).exists(), "{name}: volume source {source} is missing");
                } else {
                    assert!(
                        volumes.as_ref().is_some_and(|vs| vs.contains(&source)),
                        "{name}: volume {source} not declared"
                    );
                }
            }
        }
    }
    for (context, dockerfile) in dockerfiles {
        check_dockerfile(&context, &dockerfile);
    }
}

/// Every `COPY` from the build context names files that exist.
fn check_dockerfile(context: &Path, dockerfile: &Path) {
    let text = std::fs::read_to_string(dockerfile).unwrap();
    assert!(text.lines().any(|l| l.starts_with("FROM ")), "{}: no FROM", dockerfile.display());
    for line in text.lines().filter(|l| l.starts_with("COPY ")) {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        if words.iter().any(|w| w.starts_with("--from")) {
            continue;
        }
        for src in &words[..words.len() - 1] {
            if *src == "." {
                continue;
            }
            assert!(context.join(src).exists(), "{}: COPY source {src} is missing", dockerfile.display());
        }
    }
}

#[test]
fn systemd_units_are_complete() {
    for unit in ["fleetup-server.service", "fleetup-agent.service"] {
        let text = std::fs::read_to_string(workspace_root().join("docker/systemd").join(unit)).unwrap();
        for section in ["[Unit]", "[Service]", "[Install]"] {
            assert!(text.contains(section), "{unit}: no {section}");
        }
        let exec = text.lines().find(|l| l.starts_with("ExecStart=")).unwrap_or_else(|| panic!("{unit}: no ExecStart"));
        let binary = unit.trim_end_matches(".service");
        assert!(exec.contains(&format!("/usr/local/bin/{binary}")), "{unit}: {exec}");
    }
}
