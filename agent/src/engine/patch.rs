//! Config patches and `patch-webapp`. Config edits are computed while staging and swapped
//! in with update-files' rename set, so the new services start on them and the health
//! check covers them (`patch-config` only records what was applied). The web app is
//! deployed into a new versioned directory with an atomic switch of the `current` link.

use super::events::append_log;
use super::journal::Record;
use super::run::{PhaseResult, Run, Stop, write_durable};
use super::{config_patch, webapp};
use fleetup_proto::manifest::{FileAction, normal_path};
use fleetup_proto::{PhaseId, PhaseStatus};
use serde_json::json;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;

impl Run<'_> {
    /// Computes every patched config file while staging, before anything changes: each
    /// file's edits are applied in order to its current text (or, when the rollup also
    /// replaces or adds it, to the staged new file, in place). A file not in `[[files]]`
    /// is written to `<staging>/config/<file>` with the original's permissions, and
    /// update-files swaps it in with the rename set; its original is kept to detect a
    /// change made between staging and the outage.
    pub(crate) fn stage_config_patches(&mut self) -> Result<(), Stop> {
        let m = self.manifest().clone();
        let staged_sources: BTreeMap<String, String> = m
            .files
            .iter()
            .filter(|f| f.action != FileAction::Remove)
            .map(|f| (normal_path(&f.path), f.source_path()))
            .collect();
        let mut texts: BTreeMap<String, (PathBuf, String)> = BTreeMap::new();
        for c in &m.config_patches {
            let file = normal_path(&c.file);
            if !texts.contains_key(&file) {
                let (from, out) = match staged_sources.get(&file) {
                    Some(source) => (self.pkg().join(source), self.pkg().join(source)),
                    None => (self.root.join(&file), self.staged_config(&file)),
                };
                let original = fs::read(&from).map_err(|e| Stop::Failed(format!("reading {file}: {e}")))?;
                let text = String::from_utf8(original.clone())
                    .map_err(|_| Stop::Failed(format!("{file} is not UTF-8 text; it cannot be patched")))?;
                if !staged_sources.contains_key(&file) {
                    self.config_originals.insert(file.clone(), original);
                }
                texts.insert(file.clone(), (out, text));
            }
            let (_, text) = texts.get_mut(&file).expect("inserted above");
            *text = config_patch::apply(text, c).map_err(|e| Stop::Failed(format!("patching {}: {e}", c.file)))?;
        }
        for (file, (out, text)) in &texts {
            fs::create_dir_all(out.parent().expect("has a parent")).map_err(|e| Stop::Failed(e.to_string()))?;
            // The staged file's own mode (set from the manifest), or the original's.
            let mode_of = if staged_sources.contains_key(file) { out.clone() } else { self.root.join(file) };
            let meta = fs::metadata(&mode_of).map_err(|e| Stop::Failed(format!("{file}: {e}")))?;
            let tmp = out.with_extension("fleetup-tmp");
            write_durable(&tmp, text.as_bytes()).map_err(|e| Stop::Failed(format!("staging {file}: {e}")))?;
            fs::set_permissions(&tmp, meta.permissions()).map_err(|e| Stop::Failed(e.to_string()))?;
            // The patched copy keeps the owner too: a service reading its config as its
            // own user must still be able to.
            std::os::unix::fs::lchown(&tmp, Some(meta.uid()), Some(meta.gid()))
                .map_err(|e| Stop::Failed(format!("staging {file}: setting its owner: {e}")))?;
            fs::rename(&tmp, out).map_err(|e| Stop::Failed(format!("staging {file}: {e}")))?;
        }
        Ok(())
    }

    /// Where the patched copy of a config file (not in `[[files]]`) is staged.
    pub(crate) fn staged_config(&self, file: &str) -> PathBuf {
        self.stage.join("config").join(file)
    }

    /// The edits were applied with update-files' rename set, before the services started
    /// (so the health check covered them); this phase records what was applied.
    #[allow(clippy::unnecessary_wraps, reason = "every phase returns a PhaseResult")]
    pub(crate) fn patch_config(&mut self) -> PhaseResult {
        let p = PhaseId::PatchConfig;
        let m = self.manifest().clone();
        if m.config_patches.is_empty() {
            return Ok((PhaseStatus::Skipped, "no config patches".into()));
        }
        let log = self.em.logs.join("patch-config.log");
        for c in &m.config_patches {
            append_log(
                &log,
                &format!(
                    "{}: {:?} {} (swapped in with the file update; the original is in {})",
                    c.file,
                    c.edit,
                    c.value.as_ref().map_or_else(|| "removed".to_owned(), |v| format!("= {v}")),
                    self.backup().join(&c.file).display()
                ),
            );
            self.em.emit(p, PhaseStatus::Running, format!("patched {}", c.file), json!({ "file": c.file }));
        }
        Ok((
            PhaseStatus::Succeeded,
            format!(
                "{} config edit(s) applied with the file update, before the services started (originals backed up)",
                m.config_patches.len()
            ),
        ))
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
