//! The token lifecycle (admin): API tokens listed, created with an expiry and revoked,
//! enrollment tokens revoked, dashboard users listed, disabled, enabled and given a new
//! password (`/tokens`, `/enrollment-tokens/{id}`, `/users`).

use crate::{Client, Error, Method};
use fleetup_proto::api::{ApiToken, CreatedApiToken, NewApiToken, NewPassword, User};
use fleetup_proto::id::TokenId;

impl Client {
    /// `GET /tokens`, every page: newest first, revoked and expired tokens included, never
    /// their secrets.
    pub async fn api_tokens(&self) -> Result<Vec<ApiToken>, Error> {
        self.every_page("/tokens").await
    }

    /// `POST /tokens`: a new API token and its secret (shown this once).
    pub async fn create_api_token(&self, new: &NewApiToken) -> Result<CreatedApiToken, Error> {
        self.post("/tokens", new).await
    }

    /// `DELETE /tokens/{id}`: the token is refused (`token-revoked`) from its next request.
    pub async fn revoke_api_token(&self, id: &TokenId) -> Result<(), Error> {
        self.delete(&format!("/tokens/{id}")).await
    }

    /// `DELETE /enrollment-tokens/{id}`: no agent enrolls with it any more.
    pub async fn revoke_enrollment_token(&self, id: &TokenId) -> Result<(), Error> {
        self.delete(&format!("/enrollment-tokens/{id}")).await
    }

    /// `GET /users`, every page: by login name.
    pub async fn users(&self) -> Result<Vec<User>, Error> {
        self.every_page("/users").await
    }

    /// `POST /users/{name}/disable`: the user cannot log in; their sessions end.
    pub async fn disable_user(&self, username: &str) -> Result<User, Error> {
        self.post(&format!("/users/{}/disable", segment(username)), &serde_json::json!({})).await
    }

    /// `POST /users/{name}/enable`.
    pub async fn enable_user(&self, username: &str) -> Result<User, Error> {
        self.post(&format!("/users/{}/enable", segment(username)), &serde_json::json!({})).await
    }

    /// `POST /users/{name}/password`: a new password; the user's sessions end.
    pub async fn reset_password(&self, username: &str, password: &str) -> Result<(), Error> {
        let path = format!("/users/{}/password", segment(username));
        let req = self.request(Method::POST, &path).json(&NewPassword { password: password.to_owned() });
        self.body(format!("POST /api/v1{path}"), req).await.map(drop)
    }

    async fn delete(&self, path: &str) -> Result<(), Error> {
        self.body(format!("DELETE /api/v1{path}"), self.request(Method::DELETE, path)).await.map(drop)
    }
}

/// A user name as one path segment (percent-encoded beyond letters, digits and `-._~`).
fn segment(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
