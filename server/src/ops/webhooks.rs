//! Webhook endpoints: created (the URL checked by the SSRF guard, the event types known, a
//! signing secret made and shown once) and deleted by operators, both audited.

use super::Actor;
use crate::app::App;
use crate::error::AppError;
use crate::model::{Role, now_ms};
use crate::store::{NewAudit, NewWebhook};
use fleetup_proto::webhooks::{CreatedWebhook, EVENT_TYPES};

/// What an operator asks for.
#[derive(Debug, Clone, Default)]
pub struct WebhookOptions {
    /// Where to POST.
    pub url: String,
    /// Event types (empty: every type).
    pub events: Vec<String>,
    /// A note for people.
    pub description: Option<String>,
    /// Whether it receives deliveries (default yes).
    pub enabled: Option<bool>,
}

/// Refuses unknown event types, with the list of known ones.
pub fn check_types(types: &[String]) -> Result<(), AppError> {
    if let Some(bad) = types.iter().find(|t| !EVENT_TYPES.contains(&t.as_str())) {
        return Err(AppError::Unprocessable(format!(
            "unknown event type '{bad}': the types are {}",
            EVENT_TYPES.join(", ")
        )));
    }
    Ok(())
}

/// Creates an endpoint (operator); its secret is in the answer only.
pub async fn create(app: &App, actor: &Actor, o: WebhookOptions) -> Result<CreatedWebhook, AppError> {
    actor.require(Role::Operator)?;
    let url = crate::hooks::guard::check_url(o.url.trim(), app.config.webhook_allow_private)
        .await
        .map_err(AppError::Unprocessable)?;
    if url.as_str().len() > 2048 {
        return Err(AppError::Unprocessable("the webhook URL is longer than 2048 characters".into()));
    }
    let mut events = o.events;
    check_types(&events)?;
    events.sort();
    events.dedup();
    let description = o.description.unwrap_or_default().trim().to_owned();
    if description.chars().count() > 200 {
        return Err(AppError::Unprocessable("the description is longer than 200 characters".into()));
    }
    let secret = crate::auth::new_secret("whsec");
    let new = NewWebhook {
        id: fleetup_proto::id::new_id(),
        url: url.to_string(),
        events,
        secret: secret.clone(),
        description,
        enabled: o.enabled.unwrap_or(true),
        created_by: actor.name.clone(),
    };
    let detail = serde_json::json!({ "url": new.url, "events": new.events, "enabled": new.enabled });
    let audit = NewAudit::new(&actor.name, "webhook.create", "webhook", &new.id, detail);
    let webhook = app.store.create_webhook(&new, now_ms(), &audit).await?;
    Ok(CreatedWebhook { webhook, secret })
}

/// Deletes an endpoint and its delivery log (operator).
pub async fn delete(app: &App, actor: &Actor, id: &str) -> Result<(), AppError> {
    actor.require(Role::Operator)?;
    let audit = NewAudit::new(&actor.name, "webhook.delete", "webhook", id, serde_json::json!({}));
    app.store.delete_webhook(id, now_ms(), &audit).await?;
    Ok(())
}
