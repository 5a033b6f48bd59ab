//! Static files (CSS, htmx, the little dashboard script), compiled into the binary so the
//! server runs from anywhere. Pages link them as `/static/NAME?v=HASH`: the hash changes
//! with the content, so browsers may cache them for a year.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG};
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};
use std::sync::LazyLock;

/// (name, content type, bytes).
const FILES: &[(&str, &str, &[u8])] = &[
    ("app.css", "text/css; charset=utf-8", include_bytes!("../../../web/static/app.css")),
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../../../web/static/app.js")),
    ("htmx-2.0.11.min.js", "text/javascript; charset=utf-8", include_bytes!("../../../web/static/htmx-2.0.11.min.js")),
    (
        "htmx-ext-sse-2.2.4.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../web/static/htmx-ext-sse-2.2.4.min.js"),
    ),
];

/// Each file's versioned URL, computed once.
static URLS: LazyLock<Vec<(&'static str, &'static str)>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|(name, _, bytes)| {
            let hash = hex::encode(&Sha256::digest(bytes)[..6]);
            let url: &'static str = Box::leak(format!("/static/{name}?v={hash}").into_boxed_str());
            (*name, url)
        })
        .collect()
});

/// The versioned URL of a static file.
pub fn url(name: &str) -> &'static str {
    URLS.iter().find(|(n, _)| *n == name).map_or("/static/missing", |(_, u)| u)
}

/// `GET /static/{file}`.
pub async fn serve(Path(file): Path<String>) -> Response {
    match FILES.iter().find(|(name, _, _)| *name == file) {
        Some((name, ctype, bytes)) => {
            let etag = url(name).rsplit('=').next().unwrap_or_default();
            (
                [
                    (CONTENT_TYPE, (*ctype).to_owned()),
                    (CACHE_CONTROL, "public, max-age=31536000, immutable".to_owned()),
                    (ETAG, format!("\"{etag}\"")),
                ],
                *bytes,
            )
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such static file").into_response(),
    }
}
