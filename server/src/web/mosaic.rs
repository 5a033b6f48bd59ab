//! The fleet overview: every server of a rollout at a glance, one small cell each, by
//! state — a colour and a pattern (a cross for failed, stripes for running, a bar for
//! waiting, an outline for not started, a slash for skipped), so it reads without colour.
//!
//! Rendered on the server as one palette PNG (`GET /rollouts/{id}/mosaic.png`), a few KB
//! at 10,000 servers, where 10,000 links would be hundreds of KB of HTML. The image is a
//! server-side image map (`<a href=…/mosaic/open/…><img ismap></a>`): a click sends the
//! cell's coordinates, and the server answers with a redirect to that server's job — every
//! cell is a link, without JavaScript. Filters by state and wave draw only the matching
//! servers; the same filters map a click back. Search by host name or label is
//! [`find`]: one match jumps to its row in the grid, several are listed.

use super::WebResult;
use super::session::User;
use crate::app::AppState;
use crate::error::AppError;
use crate::model::{JobState, RolloutId};
use crate::store::MosaicCell;
use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};

/// Cells per row.
pub const COLUMNS: usize = 100;
/// Pixels per cell: 7 drawn, 1 gap.
const PITCH: usize = 8;
const CELL: usize = 7;

/// The palette: index → RGB.
const PALETTE: [[u8; 3]; 12] = [
    [0xff, 0xff, 0xff], // 0 gap, inside an outline
    [0x3f, 0x8f, 0x55], // 1 succeeded
    [0x3b, 0x78, 0xb8], // 2 running
    [0xa9, 0xc8, 0xea], // 3 running, stripe
    [0xf3, 0xd4, 0x8a], // 4 waiting
    [0x6b, 0x4a, 0x00], // 5 waiting, bar
    [0xc0, 0x39, 0x2b], // 6 failed
    [0x9a, 0xa5, 0xb1], // 7 not started, outline
    [0xc5, 0xcc, 0xd3], // 8 skipped
    [0x52, 0x60, 0x6d], // 9 skipped slash, cancelled
    [0xff, 0xff, 0xff], // 10 marks on dark cells
    [0xec, 0xef, 0xf2], // 11 unused
];

/// The look of a cell: one per group of states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// Succeeded: solid green.
    Ok,
    /// Dispatched, running: blue with stripes.
    Running,
    /// Waiting, undeliverable: amber with a bar.
    Waiting,
    /// Failed, rolled back, lost: red with a cross.
    Failed,
    /// Pending, queued: an outline.
    NotStarted,
    /// Skipped: grey with a slash.
    Skipped,
    /// Cancelled, excluded: dark grey with a dash.
    Cancelled,
}

impl Look {
    /// Every look, in the legend's order.
    pub const ALL: [Look; 7] =
        [Look::Ok, Look::Running, Look::Waiting, Look::Failed, Look::NotStarted, Look::Skipped, Look::Cancelled];

    /// The look of a state.
    pub const fn of(s: JobState) -> Self {
        match s {
            JobState::Succeeded => Look::Ok,
            JobState::Dispatched | JobState::Running => Look::Running,
            JobState::Waiting | JobState::Undeliverable => Look::Waiting,
            JobState::Failed | JobState::RolledBack | JobState::Lost => Look::Failed,
            JobState::Pending | JobState::Queued => Look::NotStarted,
            JobState::Skipped => Look::Skipped,
            JobState::Cancelled | JobState::Retried | JobState::Excluded => Look::Cancelled,
        }
    }

    /// What the legend says.
    pub const fn label(self) -> &'static str {
        match self {
            Look::Ok => "succeeded",
            Look::Running => "running",
            Look::Waiting => "waiting / undeliverable",
            Look::Failed => "failed / rolled back / lost",
            Look::NotStarted => "not started",
            Look::Skipped => "skipped",
            Look::Cancelled => "cancelled / excluded",
        }
    }

    /// The palette index of pixel (x, y) of a cell, both in `0..CELL`.
    fn pixel(self, x: usize, y: usize) -> u8 {
        let edge = x == 0 || y == 0 || x == CELL - 1 || y == CELL - 1;
        match self {
            Look::Ok => 1,
            Look::Running => {
                if y % 2 == 1 {
                    3
                } else {
                    2
                }
            }
            Look::Waiting => {
                if x == 3 && matches!(y, 1..=3 | 5) {
                    5
                } else {
                    4
                }
            }
            Look::Failed => {
                if (x == y || x + y == CELL - 1) && !edge {
                    10
                } else {
                    6
                }
            }
            Look::NotStarted => {
                if edge {
                    7
                } else {
                    0
                }
            }
            Look::Skipped => {
                if x + y == CELL - 1 {
                    9
                } else {
                    8
                }
            }
            Look::Cancelled => {
                if y == 3 && !edge {
                    10
                } else {
                    9
                }
            }
        }
    }
}

/// A PNG of `width` × `height` palette indexes (8 bits each, rows top to bottom).
fn png(width: usize, height: usize, pixels: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    fn chunk(out: &mut Vec<u8>, kind: [u8; 4], data: &[u8]) {
        out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(&kind);
        crc.update(data);
        out.extend_from_slice(&kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&u32::try_from(width).unwrap_or(u32::MAX).to_be_bytes());
    ihdr.extend_from_slice(&u32::try_from(height).unwrap_or(u32::MAX).to_be_bytes());
    ihdr.extend_from_slice(&[8, 3, 0, 0, 0]); // 8 bits, palette, deflate, adaptive filters, no interlace
    chunk(&mut out, *b"IHDR", &ihdr);
    chunk(&mut out, *b"PLTE", &PALETTE.concat());
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    for row in pixels.chunks(width) {
        // Filter type 0 (none) before each row; writing into a Vec cannot fail.
        let _ = z.write_all(&[0]).and_then(|()| z.write_all(row));
    }
    chunk(&mut out, *b"IDAT", &z.finish().unwrap_or_default());
    chunk(&mut out, *b"IEND", &[]);
    out
}

/// The mosaic of `looks`, [`COLUMNS`] a row: (width, height, PNG).
pub fn render(looks: &[Look]) -> (usize, usize, Vec<u8>) {
    let rows = looks.len().div_ceil(COLUMNS).max(1);
    let cols = looks.len().clamp(1, COLUMNS);
    let (w, h) = (cols * PITCH - 1, rows * PITCH - 1);
    let mut px = vec![0u8; w * h];
    for (i, look) in looks.iter().enumerate() {
        let (cx, cy) = ((i % COLUMNS) * PITCH, (i / COLUMNS) * PITCH);
        for y in 0..CELL {
            for x in 0..CELL {
                px[(cy + y) * w + cx + x] = look.pixel(x, y);
            }
        }
    }
    (w, h, png(w, h, &px))
}

/// A legend swatch: one cell, as a `data:` URI.
pub fn swatch(look: Look) -> String {
    use base64::Engine as _;
    let (_, _, bytes) = render(&[look]);
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The cell under pixel (x, y) of a mosaic of `n` cells, if any.
pub fn cell_at(n: usize, x: usize, y: usize) -> Option<usize> {
    let (col, row) = (x / PITCH, y / PITCH);
    let i = row * COLUMNS + col;
    (col < COLUMNS && i < n).then_some(i)
}

/// The mosaic's filters: a job state (or every state) and a wave (0: every wave).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Filter {
    /// A job state id, or empty.
    #[serde(default)]
    pub state: Option<String>,
    /// A wave number, or 0 / absent.
    #[serde(default)]
    pub wave: Option<u32>,
}

impl Filter {
    /// Checks the state, with a message saying what to write.
    pub fn job_state(&self) -> Result<Option<JobState>, AppError> {
        match self.state.as_deref().filter(|s| !s.is_empty() && *s != "all") {
            None => Ok(None),
            Some(s) => JobState::parse(s)
                .map(Some)
                .ok_or_else(|| AppError::BadRequest(format!("unknown job state '{s}': use one the filters list"))),
        }
    }

    /// The cells it keeps.
    pub fn apply(&self, cells: Vec<MosaicCell>) -> Result<Vec<MosaicCell>, AppError> {
        let state = self.job_state()?;
        let wave = self.wave.filter(|w| *w > 0);
        Ok(cells
            .into_iter()
            .filter(|c| state.is_none_or(|s| c.state == s) && wave.is_none_or(|w| c.wave == w))
            .collect())
    }

    /// `state/wave` path segments of a click's URL (`all/0` for no filter).
    pub fn segments(&self) -> String {
        format!("{}/{}", self.state.as_deref().filter(|s| !s.is_empty()).unwrap_or("all"), self.wave.unwrap_or(0))
    }
}

/// The fleet overview partial.
#[derive(Debug, Template, WebTemplate)]
#[template(path = "_mosaic.html")]
pub struct Mosaic {
    rollout_id: String,
    /// The filters, as the grid's query keeps them.
    filter: Filter,
    /// `state/wave` of the click URL.
    segments: String,
    /// The image's size.
    width: usize,
    height: usize,
    /// Servers shown, and in all.
    shown: usize,
    total: usize,
    /// A cache-buster: the rollout's live stamp.
    stamp: String,
    /// (look, count, swatch).
    legend: Vec<(&'static str, usize, String)>,
    /// Waves to filter by: (number, servers).
    waves: Vec<(u32, u64)>,
    /// The alt text: the counts in words.
    alt: String,
    /// What the search found.
    found: Option<Found>,
}

/// The result of a search that did not jump to one server.
#[derive(Debug)]
pub struct Found {
    /// What was searched.
    pub query: String,
    /// How many match.
    pub count: usize,
    /// The first matches: (job id, host name, state).
    pub first: Vec<(String, String, &'static str)>,
}

/// How many matches a search lists.
const FOUND_SHOWN: usize = 20;

/// Builds the overview of rollout `r` under `filter`.
pub async fn build(
    state: &AppState,
    r: &crate::model::Rollout,
    filter: &Filter,
    found: Option<Found>,
) -> WebResult<Mosaic> {
    let stamp = super::live::stamp(state, &r.id).await?;
    // The partial needs counts only (the image is its own request): without a wave filter
    // they are the rollout's own counts, no read of every job.
    let counted = |keep: &dyn Fn(JobState) -> bool| -> Vec<Look> {
        let mut out = Vec::new();
        for (st, n) in r.counts.iter().filter(|(st, _)| **st != JobState::Retried && keep(**st)) {
            out.extend(std::iter::repeat_n(Look::of(*st), usize::try_from(*n).unwrap_or(0)));
        }
        out
    };
    let total = counted(&|_| true).len();
    let looks: Vec<Look> = if filter.wave.unwrap_or(0) == 0 {
        let only = filter.job_state()?;
        counted(&|st| only.is_none_or(|o| o == st))
    } else {
        filter.apply(state.store.mosaic(&r.id).await?)?.iter().map(|c| Look::of(c.state)).collect()
    };
    let rows = looks.len().div_ceil(COLUMNS).max(1);
    let cols = looks.len().clamp(1, COLUMNS);
    let legend: Vec<(&'static str, usize, String)> =
        Look::ALL.iter().map(|l| (l.label(), looks.iter().filter(|x| *x == l).count(), swatch(*l))).collect();
    let alt = format!(
        "{} server(s): {}",
        looks.len(),
        legend.iter().filter(|(_, n, _)| *n > 0).map(|(l, n, _)| format!("{n} {l}")).collect::<Vec<_>>().join(", ")
    );
    Ok(Mosaic {
        rollout_id: r.id.to_string(),
        segments: filter.segments(),
        filter: filter.clone(),
        width: cols * PITCH - 1,
        height: rows * PITCH - 1,
        shown: looks.len(),
        total,
        stamp,
        legend,
        waves: r.waves.iter().map(|w| (w.number, w.size)).collect(),
        alt,
        found,
    })
}

impl Mosaic {
    /// The query string of the page with these filters and wave `w` (0: every wave).
    pub fn wave_query(&self, w: impl std::borrow::Borrow<u32>) -> String {
        let w = *w.borrow();
        format!("state={}&wave={w}", self.filter.state.as_deref().unwrap_or_default())
    }

    /// The selected wave (0: none).
    pub fn wave(&self) -> u32 {
        self.filter.wave.unwrap_or(0)
    }
}

/// `GET /rollouts/{id}/mosaic?state=&wave=`: the overview partial (htmx, on a change).
pub async fn fragment(
    State(state): State<AppState>,
    _user: User,
    Path(id): Path<RolloutId>,
    Query(filter): Query<Filter>,
) -> WebResult<Mosaic> {
    let r = state.store.get_rollout(&id).await?;
    build(&state, &r, &filter, None).await
}

/// `GET /rollouts/{id}/mosaic.png?state=&wave=`: the image.
pub async fn image(
    State(state): State<AppState>,
    _user: User,
    Path(id): Path<RolloutId>,
    Query(filter): Query<Filter>,
) -> WebResult<Response> {
    let cells = filter.apply(state.store.mosaic(&id).await?)?;
    let looks: Vec<Look> = cells.iter().map(|c| Look::of(c.state)).collect();
    let (_, _, bytes) = render(&looks);
    Ok(([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "no-store")], bytes).into_response())
}

/// `GET /rollouts/{id}/mosaic/open/{state}/{wave}?X,Y`: the job of the cell clicked (the
/// browser appends the coordinates of a click on an `ismap` image).
pub async fn open(
    State(state): State<AppState>,
    _user: User,
    Path((id, st, wave)): Path<(RolloutId, String, u32)>,
    RawQuery(q): RawQuery,
) -> WebResult<Redirect> {
    let filter = Filter { state: Some(st), wave: Some(wave) };
    let cells = filter.apply(state.store.mosaic(&id).await?)?;
    let (x, y) = q
        .as_deref()
        .and_then(|q| q.split_once(','))
        .and_then(|(x, y)| Some((x.parse::<usize>().ok()?, y.parse::<usize>().ok()?)))
        .ok_or_else(|| AppError::BadRequest("click a cell of the overview (its coordinates are missing)".into()))?;
    match cell_at(cells.len(), x, y) {
        Some(i) => Ok(Redirect::to(&format!("/jobs/{}", cells[i].job_id))),
        None => Ok(Redirect::to(&format!("/rollouts/{id}"))),
    }
}

/// What a search does.
pub enum Search {
    /// One server: its job's index in the unfiltered grid order.
    Jump(crate::model::JobId, usize),
    /// None or several: listed.
    List(Found),
}

/// Searches the rollout's servers: `key=value[, …]` by labels, else by host name (an exact
/// name first, else the names containing it, case-insensitive).
pub async fn find(state: &AppState, id: &RolloutId, query: &str) -> WebResult<Search> {
    let cells = state.store.mosaic(id).await?;
    let q = query.trim();
    let matches: Vec<usize> = if q.contains('=') {
        let mut wanted = Vec::new();
        for part in q.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                AppError::BadRequest(format!("'{part}': write a host name, or labels as key=value, key2=value2"))
            })?;
            wanted.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        (0..cells.len()).filter(|i| wanted.iter().all(|(k, v)| cells[*i].labels.get(k) == Some(v))).collect()
    } else {
        let lower = q.to_lowercase();
        match cells.iter().position(|c| c.hostname.eq_ignore_ascii_case(q)) {
            Some(i) => vec![i],
            None => (0..cells.len()).filter(|i| cells[*i].hostname.to_lowercase().contains(&lower)).collect(),
        }
    };
    if let [one] = matches.as_slice() {
        return Ok(Search::Jump(cells[*one].job_id.clone(), *one));
    }
    Ok(Search::List(Found {
        query: q.to_owned(),
        count: matches.len(),
        first: matches
            .iter()
            .take(FOUND_SHOWN)
            .map(|i| (cells[*i].job_id.to_string(), cells[*i].hostname.clone(), cells[*i].state.as_str()))
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_click_maps_to_the_cell_under_it() {
        assert_eq!(cell_at(250, 0, 0), Some(0));
        assert_eq!(cell_at(250, 8 * 99 + 3, 8 + 6), Some(199));
        assert_eq!(cell_at(250, 8 * 60, 8 * 2), None, "past the last cell");
        assert_eq!(cell_at(250, 8 * 100, 0), None, "past the last column");
    }

    #[test]
    fn ten_thousand_cells_are_a_small_png_and_each_look_differs_without_colour() {
        let looks: Vec<Look> = (0..10_000).map(|i| Look::ALL[i % 7]).collect();
        let (width, height, bytes) = render(&looks);
        assert_eq!((width, height), (799, 799));
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert!(bytes.len() < 150_000, "{} bytes", bytes.len());
        // Patterns: no two looks have the same shape of light and dark pixels.
        let shape = |l: Look| -> Vec<bool> {
            (0..CELL * CELL)
                .map(|i| {
                    let rgb = PALETTE[l.pixel(i % CELL, i / CELL) as usize];
                    rgb.iter().map(|c| u32::from(*c)).sum::<u32>() > 3 * 0xb0
                })
                .collect()
        };
        for (i, a) in Look::ALL.iter().enumerate() {
            for b in &Look::ALL[i + 1..] {
                assert_ne!(shape(*a), shape(*b), "{a:?} and {b:?} differ in pattern, not only colour");
            }
        }
    }
}
