//! Agents, packages, API tokens and enrollment tokens. An agent is named by id or hostname;
//! a token by its id.

use crate::cli::{AgentsCmd, ApiTokenCmd, EnrollmentCmd, PackagesCmd, TokensCmd};
use crate::fail::{Failure, Outcome};
use crate::output::{Out, labels, parse_labels, table};
use fleetup_client::{AgentQuery, Client, NewEnrollmentToken, StatusCode};
use fleetup_proto::api::Agent;
use fleetup_proto::api::NewApiToken;
use fleetup_proto::id::{AgentId, TokenId};
use std::fmt::Write as _;

/// The agent `s` names: its id, else its hostname.
async fn find(client: &Client, s: &str) -> Outcome<Agent> {
    if let Ok(id) = s.parse::<AgentId>() {
        match client.agent(&id).await {
            Ok(a) => return Ok(a),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let named: Vec<Agent> = client.agents().await?.into_iter().filter(|a| a.hostname == s && !a.revoked).collect();
    match named.len() {
        0 => Err(Failure::refused(format!("no agent has the id or hostname '{s}' (fleetupctl agents list)"))),
        1 => Ok(named.into_iter().next().expect("one")),
        n => Err(Failure::refused(format!(
            "{n} agents are called '{s}': name one by id ({})",
            named.iter().map(|a| a.id.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

fn agent_row(a: &Agent) -> Vec<String> {
    let installed = a.installed.last().map_or_else(|| "-".into(), |i| format!("{} {}", i.rollup, i.version));
    let status = if a.revoked {
        "revoked"
    } else if a.online {
        "online"
    } else {
        "offline"
    };
    vec![a.hostname.clone(), status.into(), labels(&a.labels), installed, a.id.to_string()]
}

const AGENT_HEADERS: [&str; 5] = ["HOST", "STATUS", "LABELS", "INSTALLED", "ID"];

/// `agents …`.
pub async fn agents(client: &Client, out: Out, cmd: &AgentsCmd) -> Outcome {
    match cmd {
        AgentsCmd::List { label, online, installed } => {
            let label = if label.is_empty() { None } else { Some(labels(&parse_labels(label, "--label")?)) };
            let list =
                client.agents_where(&AgentQuery { label, online: *online, installed: installed.clone() }).await?;
            out.show(&list, || table(&AGENT_HEADERS, &list.iter().map(agent_row).collect::<Vec<_>>()));
        }
        AgentsCmd::Show { agent } => {
            let a = find(client, agent).await?;
            out.show(&a, || {
                let mut s = table(&AGENT_HEADERS, &[agent_row(&a)]);
                let _ = write!(
                    s,
                    "\nversion {}, enrolled {}, last seen {}",
                    a.version,
                    a.enrolled_at.to_rfc3339(),
                    a.last_seen.to_rfc3339()
                );
                for i in &a.installed {
                    let _ = write!(
                        s,
                        "\n  installed {} {} at {} (job {})",
                        i.rollup,
                        i.version,
                        i.at.to_rfc3339(),
                        i.job_id
                    );
                }
                s
            });
        }
        AgentsCmd::Label { agent, changes } => {
            let a = find(client, agent).await?;
            let mut new = a.labels.clone();
            for c in changes {
                if let Some(k) = c.strip_suffix('-').filter(|k| !k.contains('=')) {
                    new.remove(k);
                } else {
                    new.extend(parse_labels(std::slice::from_ref(c), "label")?);
                }
            }
            let after = client.set_labels(&a.id, &new).await?;
            out.show(&after, || format!("{}: {}", after.hostname, labels(&after.labels)));
        }
        AgentsCmd::Revoke { agent } => {
            let a = find(client, agent).await?;
            client.revoke_agent(&a.id).await?;
            out.show(&serde_json::json!({ "revoked": a.id }), || {
                format!("revoked {} ({}): its token no longer works", a.hostname, a.id)
            });
        }
    }
    Ok(())
}

/// `packages …`.
pub async fn packages(client: &Client, out: Out, cmd: &PackagesCmd) -> Outcome {
    let rows = |list: &[fleetup_proto::api::Package]| {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.version.clone(),
                    p.size.to_string(),
                    p.uploaded_at.format("%Y-%m-%d %H:%M").to_string(),
                    p.id.to_string(),
                ]
            })
            .collect();
        table(&["NAME", "VERSION", "BYTES", "UPLOADED", "ID"], &rows)
    };
    match cmd {
        PackagesCmd::List { name } => {
            let list = match name {
                Some(n) => client.packages_named(n).await?,
                None => client.packages().await?,
            };
            out.show(&list, || rows(&list));
        }
        PackagesCmd::Upload { file } => {
            let p = client
                .clone()
                .with_timeout(std::time::Duration::from_mins(10))
                .upload_package(file)
                .await
                .map_err(|e| Failure::from(e).context(&format!("uploading {}", file.display())))?;
            out.show(&p, || {
                format!(
                    "uploaded {} {} (signed by {}): {}\nuse it in a spec file as: package = \"{}@{}\"",
                    p.name, p.version, p.key_id, p.id, p.name, p.version
                )
            });
        }
    }
    Ok(())
}

/// `tokens …`.
pub async fn tokens(client: &Client, out: Out, cmd: &TokensCmd) -> Outcome {
    let cmd = match cmd {
        TokensCmd::Api(cmd) => return api_tokens(client, out, cmd).await,
        TokensCmd::Enrollment(cmd) => cmd,
    };
    match cmd {
        EnrollmentCmd::Create { name, label, expires_in_secs, max_uses } => {
            let new = NewEnrollmentToken {
                name: name.clone(),
                labels: parse_labels(label, "--label")?,
                expires_in_secs: *expires_in_secs,
                max_uses: *max_uses,
            };
            let t = client.create_enrollment_token(&new).await?;
            let v = serde_json::json!({ "token": t.token, "secret": t.secret });
            out.show(&v, || {
                format!(
                    "enrollment token {} ({}), shown this once:\n{}\nagents: fleetup-agent enroll --server URL --token {} …",
                    t.token.name, t.token.id, t.secret, t.secret
                )
            });
        }
        EnrollmentCmd::List => {
            let list = client.enrollment_tokens().await?;
            out.show(&list, || {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            labels(&t.labels),
                            format!("{}/{}", t.uses, t.max_uses.map_or_else(|| "∞".into(), |m| m.to_string())),
                            t.expires_at.map_or_else(|| "never".into(), |e| e.to_rfc3339()),
                            t.id.to_string(),
                        ]
                    })
                    .collect();
                table(&["NAME", "LABELS", "USES", "EXPIRES", "ID"], &rows)
            });
        }
        EnrollmentCmd::Revoke { id } => {
            client.revoke_enrollment_token(&token_id(id)?).await?;
            out.show(&serde_json::json!({ "revoked": id }), || format!("enrollment token {id} revoked"));
        }
    }
    Ok(())
}

/// `tokens api …`.
async fn api_tokens(client: &Client, out: Out, cmd: &ApiTokenCmd) -> Outcome {
    match cmd {
        ApiTokenCmd::Create { name, role, expires_in_secs } => {
            let new = NewApiToken { name: name.clone(), role: *role, expires_in_secs: *expires_in_secs };
            let t = client.create_api_token(&new).await?;
            out.show(&t, || {
                format!(
                    "API token {} ({}, {}), shown this once:\n{}",
                    t.token.name,
                    t.token.role.as_str(),
                    t.token.id,
                    t.secret
                )
            });
        }
        ApiTokenCmd::List => {
            let list = client.api_tokens().await?;
            let now = std::time::SystemTime::now().into();
            out.show(&list, || {
                let when = |t: Option<&str>| t.unwrap_or("-").to_owned();
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.role.as_str().to_owned(),
                            t.state(now).to_owned(),
                            when(t.expires_at.map(|e| e.to_rfc3339()).as_deref()),
                            when(t.last_used_at.map(|e| e.to_rfc3339()).as_deref()),
                            t.id.to_string(),
                        ]
                    })
                    .collect();
                table(&["NAME", "ROLE", "STATE", "EXPIRES", "LAST USED", "ID"], &rows)
            });
        }
        ApiTokenCmd::Revoke { id } => {
            client.revoke_api_token(&token_id(id)?).await?;
            out.show(&serde_json::json!({ "revoked": id }), || format!("API token {id} revoked"));
        }
    }
    Ok(())
}

/// A token id as typed, or a usage error that says where ids come from.
fn token_id(id: &str) -> Result<TokenId, Failure> {
    id.parse()
        .map_err(|e| Failure::usage(format!("'{id}' is not a token id ({e}); `fleetupctl tokens … list` shows them")))
}
