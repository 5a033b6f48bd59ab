//! The confirmation step of destructive actions (cancel a rollout, cancel an install, end
//! or cancel a group's installs), without JavaScript: the action's form carries the
//! sentence saying what it will do (`confirm`); posted without `confirmed=yes`, the server
//! answers with this page, which repeats the sentence and posts the same form again with
//! `confirmed=yes`. With JavaScript, `app.js` asks the same sentence in a dialog first and
//! adds `confirmed=yes`, so one click and one "OK" do it.

use super::session::User;
use super::view::Nav;
use askama::Template;
use askama_web::WebTemplate;
use axum::response::{IntoResponse, Response};

#[derive(Debug, Template, WebTemplate)]
#[template(path = "confirm.html")]
pub struct ConfirmPage {
    nav: Nav,
    action: String,
    /// Where "No" goes.
    back: String,
    question: String,
    /// The form's fields to send again (without the CSRF token, added by the template).
    fields: Vec<(String, String)>,
}

/// The page asking `question` before posting `form` to `action` again.
pub fn page(user: &User, action: &str, back: &str, form: &[(String, String)], question: String) -> ConfirmPage {
    let fields = form.iter().filter(|(k, _)| k != "csrf" && k != "confirm" && k != "confirmed").cloned().collect();
    ConfirmPage { nav: Nav::new(user, "rollouts"), action: action.to_owned(), back: back.to_owned(), question, fields }
}

/// The confirmation sentence of a form, if it still needs one (`confirm` sent and
/// `confirmed` not).
pub fn pending(form: &[(String, String)]) -> Option<String> {
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
    get("confirm").filter(|_| !confirmed(form))
}

/// True when the form says its action was confirmed.
pub fn confirmed(form: &[(String, String)]) -> bool {
    form.iter().any(|(k, v)| k == "confirmed" && v == "yes")
}

/// The confirmation page to send instead of acting, when the form still needs one.
pub fn ask(user: &User, action: &str, back: &str, form: &[(String, String)]) -> Option<Response> {
    pending(form).map(|question| page(user, action, back, form, question).into_response())
}
