//! `patch-config` and `patch-webapp`: config edits with a backup taken once (so a redo
//! after a crash never backs up an already patched file), and the web app deployed into
//! a new versioned directory with an atomic switch of the `current` link.

use super::events::append_log;
use super::journal::{Record, sync_dir};
use super::run::{PhaseResult, Run, Stop, write_durable};
use super::{config_patch, webapp};
use fleetup_proto::{PhaseId, PhaseStatus};
use serde_json::json;
use std::fs;

impl Run<'_> {
    pub(crate) fn patch_config(&mut self) -> PhaseResult {
        let p = PhaseId::PatchConfig;
        let m = self.manifest().clone();
        if m.config_patches.is_empty() {
            return Ok((PhaseStatus::Skipped, "no config patches".into()));
        }
        let log = self.em.logs.join("patch-config.log");
        for c in &m.config_patches {
            let path = self.root.join(&c.file);
            let bak = self.backup().join("config").join(&c.file);
            let recorded =
                self.journal.records().iter().any(|r| matches!(r, Record::ConfigPatch { file } if *file == c.file));
            if !recorded {
                self.record(Record::ConfigPatch { file: c.file.clone() })?;
                let original = fs::read(&path).map_err(|e| Stop::Failed(format!("reading {}: {e}", c.file)))?;
                fs::create_dir_all(bak.parent().expect("has parent")).map_err(|e| Stop::Failed(e.to_string()))?;
                let tmp = bak.with_extension("fleetup-tmp");
                write_durable(&tmp, &original).map_err(|e| Stop::Failed(e.to_string()))?;
                fs::rename(&tmp, &bak).map_err(|e| Stop::Failed(e.to_string()))?;
                append_log(&log, &format!("backed up {} to {}", c.file, bak.display()));
            }
            let text = fs::read_to_string(&path).map_err(|e| Stop::Failed(format!("reading {}: {e}", c.file)))?;
            let new = config_patch::apply(&text, &c.edit, &c.value)
                .map_err(|e| Stop::Failed(format!("patching {}: {e}", c.file)))?;
            if new != text {
                let tmp = path.with_file_name(format!(
                    ".{}.fleetup-tmp",
                    path.file_name().and_then(|n| n.to_str()).unwrap_or("config")
                ));
                write_durable(&tmp, new.as_bytes()).map_err(|e| Stop::Failed(e.to_string()))?;
                if let Ok(md) = fs::metadata(&path) {
                    let _ = fs::set_permissions(&tmp, md.permissions());
                }
                fs::rename(&tmp, &path).map_err(|e| Stop::Failed(format!("replacing {}: {e}", c.file)))?;
                sync_dir(path.parent().expect("has parent")).map_err(|e| Stop::Failed(e.to_string()))?;
            }
            append_log(&log, &format!("{}: {:?} = {}", c.file, c.edit, c.value));
            self.em.emit(p, PhaseStatus::Running, format!("patched {}", c.file), json!({ "file": c.file }));
        }
        Ok((PhaseStatus::Succeeded, format!("{} config edit(s) applied (originals backed up)", m.config_patches.len())))
    }

    pub(crate) fn patch_webapp(&mut self) -> PhaseResult {
        let m = self.manifest().clone();
        let Some(w) = &m.webapp else { return Ok((PhaseStatus::Skipped, "no web app in this rollup".into())) };
        let log = self.em.logs.join("update-webapp.log");
        let rel_dir = format!("{}/releases/{}", w.web_root, m.rollup.version);
        let dir = self.root.join(&rel_dir);
        let src = self.pkg().join(&w.source);
        if !dir.exists() {
            self.record(Record::WebappDeploy { dir: rel_dir.clone() })?;
            fs::create_dir_all(dir.parent().expect("has parent")).map_err(|e| Stop::Failed(e.to_string()))?;
            fs::rename(&src, &dir).map_err(|e| Stop::Failed(format!("deploying the web app to {rel_dir}: {e}")))?;
            append_log(&log, &format!("deployed {} to {rel_dir}", w.source));
        }
        let link_rel = format!("{}/current", w.web_root);
        let link = self.root.join(&link_rel);
        let target = format!("releases/{}", m.rollup.version);
        let old = webapp::read_target(&link);
        if old.as_deref() != Some(target.as_str()) {
            self.record(Record::WebappSwitch { link: link_rel.clone(), old_target: old.clone() })?;
            webapp::switch_link(&link, &target).map_err(|e| Stop::Failed(format!("switching {link_rel}: {e}")))?;
            append_log(&log, &format!("switched {link_rel}: {} -> {target}", old.as_deref().unwrap_or("(none)")));
        }
        Ok((PhaseStatus::Succeeded, format!("web app {} live at {link_rel} -> {target}", m.rollup.version)))
    }
}
