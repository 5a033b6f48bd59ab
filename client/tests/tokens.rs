//! The token lifecycle through the typed client and the coordinator's command line, against
//! a real `fleetup-server serve` process (the e2e harness): every answer parsed into the
//! proto types, every command run as an admin would.

use fleetup_client::{Client, NewEnrollmentToken, StatusCode};
use fleetup_e2e::binary;
use fleetup_e2e::fleet::Server;
use fleetup_proto::api::{NewApiToken, Role};
use std::io::Write as _;
use std::process::{Command, Stdio};

/// Runs `fleetup-server ARGS --database-url DB` with `stdin`; returns its standard output.
fn cli(db: &str, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(binary("fleetup-server"))
        .args(args)
        .args(["--database-url", db])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_and_users_through_the_client_and_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), None, &[]).await;
    let db = format!("sqlite:{}", server.dir.join("fleetup.db").display());
    let admin = Client::new(&server.url, &server.token).unwrap();

    // The client: create with an expiry, list (no secret), use, revoke, refused as revoked.
    let new = NewApiToken { name: "ci".into(), role: Role::Viewer, expires_in_secs: Some(3600) };
    let created = admin.create_api_token(&new).await.unwrap();
    assert!(created.secret.starts_with("flt_") && created.token.expires_at.is_some(), "{created:?}");
    let ci = Client::new(&server.url, &created.secret).unwrap();
    ci.rollouts().await.unwrap();
    let listed = admin.api_tokens().await.unwrap();
    let mine = listed.iter().find(|t| t.id == created.token.id).unwrap();
    assert!(mine.last_used_at.is_some() && mine.revoked_at.is_none(), "{mine:?}");
    admin.revoke_api_token(&created.token.id).await.unwrap();
    let refused = ci.rollouts().await.unwrap_err();
    assert_eq!((refused.status(), refused.code()), (Some(StatusCode::UNAUTHORIZED), Some("token-revoked")));

    // The command line: a token with --expires-in, listed with its state, revoked.
    let secret = cli(&db, &["token", "create", "--role", "operator", "--name", "deploy", "--expires-in", "2h"], "");
    let deploy = Client::new(&server.url, secret.trim()).unwrap();
    deploy.agents().await.unwrap();
    let table = cli(&db, &["token", "list"], "");
    let line = table.lines().find(|l| l.contains(" deploy ")).unwrap_or_else(|| panic!("{table}"));
    assert!(line.ends_with("live") && !table.contains(secret.trim()), "{table}");
    let id = line.split_whitespace().next().unwrap();
    cli(&db, &["token", "revoke", id], "");
    let refused = deploy.agents().await.unwrap_err();
    assert_eq!(refused.code(), Some("token-revoked"), "{refused}");
    assert!(cli(&db, &["token", "list"], "").lines().any(|l| l.contains(" deploy ") && l.ends_with("revoked")));

    // Enrollment tokens: listed and revoked on the command line and through the client.
    let rack = admin.create_enrollment_token(&NewEnrollmentToken::default()).await.unwrap();
    let table = cli(&db, &["enrollment-token", "list"], "");
    assert!(table.lines().any(|l| l.starts_with(rack.token.id.as_str()) && l.ends_with("live")), "{table}");
    cli(&db, &["enrollment-token", "revoke", rack.token.id.as_str()], "");
    let listed = admin.enrollment_tokens().await.unwrap();
    assert!(listed.iter().any(|t| t.id == rack.token.id && t.revoked_at.is_some()), "{listed:?}");
    let twice = admin.revoke_enrollment_token(&rack.token.id).await.unwrap_err();
    assert_eq!(twice.status(), Some(StatusCode::CONFLICT), "{twice}");
    let other = admin.create_enrollment_token(&NewEnrollmentToken::default()).await.unwrap();
    admin.revoke_enrollment_token(&other.token.id).await.unwrap();
    assert!(cli(&db, &["enrollment-token", "list"], "").lines().filter(|l| l.ends_with("revoked")).count() == 2);

    // Users: made on the command line, disabled and enabled through the client, a new
    // password on the command line.
    cli(&db, &["user", "create", "--username", "ada", "--role", "operator", "--password-stdin"], "first passphrase\n");
    let ada = admin.disable_user("ada").await.unwrap();
    assert!(ada.disabled_at.is_some());
    assert!(admin.users().await.unwrap().iter().any(|u| u.username == "ada" && u.disabled_at.is_some()));
    let again = admin.disable_user("ada").await.unwrap_err();
    assert_eq!(again.status(), Some(StatusCode::CONFLICT), "{again}");
    assert!(admin.enable_user("ada").await.unwrap().disabled_at.is_none());
    cli(&db, &["user", "disable", "--username", "ada"], "");
    assert!(cli(&db, &["user", "list"], "").lines().any(|l| l.starts_with("ada") && !l.ends_with('-')));
    cli(&db, &["user", "enable", "--username", "ada"], "");
    cli(&db, &["user", "reset-password", "--username", "ada", "--password-stdin"], "second passphrase\n");
    admin.reset_password("ada", "third passphrase").await.unwrap();
    let short = admin.reset_password("ada", "short").await.unwrap_err();
    assert_eq!(short.status(), Some(StatusCode::UNPROCESSABLE_ENTITY), "{short}");
}
