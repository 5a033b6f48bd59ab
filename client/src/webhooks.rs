//! Webhook endpoints and their delivery logs (`/webhooks`, docs/api.md "Webhooks").

use crate::{Client, Error, Method};
use fleetup_proto::webhooks::{CreatedWebhook, Webhook, WebhookDelivery};
use serde::Serialize;

/// A new endpoint (`POST /webhooks`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NewWebhook {
    /// Where deliveries are POSTed.
    pub url: String,
    /// The event types to receive (empty: every type).
    pub events: Vec<String>,
    /// A note for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether it receives deliveries (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

impl Client {
    /// `POST /webhooks`: the endpoint and its signing secret (shown this once).
    pub async fn create_webhook(&self, new: &NewWebhook) -> Result<CreatedWebhook, Error> {
        self.post("/webhooks", new).await
    }

    /// `GET /webhooks`: every endpoint, oldest first (no secrets).
    pub async fn webhooks(&self) -> Result<Vec<Webhook>, Error> {
        self.get("/webhooks").await
    }

    /// `GET /webhooks/{id}`.
    pub async fn webhook(&self, id: &str) -> Result<Webhook, Error> {
        self.get(&format!("/webhooks/{id}")).await
    }

    /// `DELETE /webhooks/{id}`: the endpoint and its delivery log.
    pub async fn delete_webhook(&self, id: &str) -> Result<(), Error> {
        let path = format!("/webhooks/{id}");
        self.body(format!("DELETE /api/v1{path}"), self.request(Method::DELETE, &path)).await.map(drop)
    }

    /// `GET /webhooks/{id}/deliveries`, every page: newest first, each with its attempts.
    pub async fn webhook_deliveries(&self, id: &str) -> Result<Vec<WebhookDelivery>, Error> {
        self.every_page(&format!("/webhooks/{id}/deliveries")).await
    }
}
