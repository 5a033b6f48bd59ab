//! A man in the middle on the TLS link, on loopback: it accepts the agent's connections
//! with a certificate of its own (for the coordinator's name, from another CA), makes its
//! own TLS connection to the coordinator, and puts a rewriting [`Proxy`] between the two
//! plaintexts. Until [`Mitm::intercept`] it only relays the encrypted bytes, as a path an
//! attacker takes over later would: an agent can enroll through it first.

use crate::proxy::Proxy;
use crate::tls::{client_config, server_config};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Connections relayed untouched, and whether new ones are intercepted instead.
#[derive(Default)]
struct Relays {
    intercepting: bool,
    open: Vec<JoinHandle<()>>,
}

/// A running man in the middle; stops when dropped.
pub struct Mitm {
    /// `https://127.0.0.1:PORT`: give this to the agent as its `--server`.
    pub url: String,
    /// Sees, and with a rule rewrites, every request it could decrypt.
    pub proxy: Proxy,
    relays: Arc<Mutex<Relays>>,
    refused: Arc<Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Mitm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mitm").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Drop for Mitm {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for r in &self.relays.lock().unwrap_or_else(PoisonError::into_inner).open {
            r.abort();
        }
    }
}

impl Mitm {
    /// A man in the middle in front of the coordinator at `coordinator` (trusted with its CA
    /// file `coordinator_ca`), presenting the certificate `cert` with key `key` to the agent
    /// side once it intercepts.
    pub async fn start(coordinator: SocketAddr, coordinator_ca: &Path, cert: &Path, key: &Path) -> Self {
        // Its own TLS client to the coordinator, behind a plain listener the proxy forwards to.
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(coordinator_ca, &[])));
        let origin = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let origin_addr = origin.local_addr().expect("bound");
        let originate = tokio::spawn(async move {
            while let Ok((mut plain, _)) = origin.accept().await {
                let connector = connector.clone();
                tokio::spawn(async move {
                    let Ok(tcp) = TcpStream::connect(coordinator).await else { return };
                    let name = ServerName::from(coordinator.ip());
                    let Ok(mut tls) = connector.connect(name, tcp).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut plain, &mut tls).await;
                });
            }
        });
        let proxy = Proxy::start(&format!("http://{origin_addr}")).await;
        let proxy_addr: SocketAddr = proxy.url.trim_start_matches("http://").parse().expect("the proxy's address");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(cert, key)));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let url = format!("https://{}", listener.local_addr().expect("bound"));
        let relays = Arc::new(Mutex::new(Relays::default()));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (relays, refused) = (relays.clone(), refused.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let mut r = relays.lock().unwrap_or_else(PoisonError::into_inner);
                    if !r.intercepting {
                        r.open.push(tokio::spawn(async move {
                            let Ok(mut up) = TcpStream::connect(coordinator).await else { return };
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                        }));
                        continue;
                    }
                    drop(r);
                    let (acceptor, refused) = (acceptor.clone(), refused.clone());
                    tokio::spawn(async move {
                        match acceptor.accept(client).await {
                            Ok(mut tls) => {
                                let Ok(mut plain) = TcpStream::connect(proxy_addr).await else { return };
                                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                            }
                            Err(e) => refused.lock().unwrap_or_else(PoisonError::into_inner).push(e.to_string()),
                        }
                    });
                }
            })
        };
        Self { url, proxy, relays, refused, tasks: vec![originate, accept] }
    }

    /// Takes the path over: the relayed connections are cut (the agent connects again), and
    /// every new connection gets the man in the middle's certificate.
    pub fn intercept(&self) {
        let mut r = self.relays.lock().unwrap_or_else(PoisonError::into_inner);
        r.intercepting = true;
        for relay in r.open.drain(..) {
            relay.abort();
        }
    }

    /// Why each agent-side TLS handshake that failed failed (e.g. the client's alert that it
    /// does not know the issuer).
    pub fn refused_handshakes(&self) -> Vec<String> {
        self.refused.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}
