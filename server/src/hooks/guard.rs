//! The SSRF guard: a webhook URL is an address the coordinator will POST to on an
//! operator's word, so by default it must be a public one. Loopback, private, link-local,
//! shared (CGNAT), multicast, documentation, benchmarking and unspecified addresses are
//! refused, when the webhook is created (an IP literal, or every address its name resolves
//! to) and again at every delivery (the client's resolver drops them, so a name that later
//! resolves inward reaches nothing). Redirects are not followed. `--webhook-allow-private`
//! lifts the rule (tests, a receiver inside the operator's own network).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Whether `ip` is a public unicast address a webhook may reach.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let seg = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (seg[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation 2001:db8::/32
                || (seg[0] == 0x0064 && seg[1] == 0xff9b) // NAT64 64:ff9b::/96 (maps to v4 inside)
                || seg[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible ::a.b.c.d
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_unspecified()
        || ip.is_multicast()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space 100.64.0.0/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18.0.0/15
        || o[0] >= 240) // reserved
}

/// Checks a webhook URL when it is created: `http`/`https`, a host, and (unless private
/// addresses are allowed) only public addresses behind it. The error is a sentence.
pub async fn check_url(url: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("'{url}' is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("the webhook URL must be http:// or https://, not {}://", parsed.scheme()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("the webhook URL must not carry credentials: deliveries are signed instead".into());
    }
    let Some(host) = parsed.host_str().map(str::to_owned) else { return Err(format!("'{url}' has no host")) };
    if allow_private {
        return Ok(parsed);
    }
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addrs: Vec<IpAddr> = if let Some(ip) = literal(&parsed) {
        vec![ip]
    } else {
        let found = tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((host.as_str(), port)))
            .await
            .map_err(|_| format!("the webhook host '{host}' did not resolve within 5 s"))?
            .map_err(|e| format!("the webhook host '{host}' does not resolve: {e}"))?;
        found.map(|a| a.ip()).collect()
    };
    if let Some(inward) = addrs.iter().find(|ip| !is_public(**ip)) {
        return Err(format!(
            "the webhook URL reaches {inward}, a loopback, private, link-local or reserved address; webhooks go to \
             public addresses only (start the coordinator with --webhook-allow-private to allow it)"
        ));
    }
    Ok(parsed)
}

/// Whether a delivery may go to `url` as its host is written (an IP literal is not seen by
/// the resolver).
pub fn literal_allowed(url: &reqwest::Url, allow_private: bool) -> bool {
    allow_private || url.host_str().is_some() && literal(url).is_none_or(is_public)
}

/// The URL's host as an IP address, when it is written as one.
fn literal(url: &reqwest::Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// The delivery client's resolver: the system's, with non-public addresses dropped
/// (unless allowed), so that a name resolving inward at delivery time reaches nothing.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    /// `--webhook-allow-private`.
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = found.into_iter().filter(|a| allow || is_public(a.ip())).collect();
            if kept.is_empty() {
                let why = format!("{host} resolves to no public address (refused: --webhook-allow-private is off)");
                return Err(why.into());
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The resolver as reqwest takes it.
pub fn resolver(allow_private: bool) -> Arc<GuardedResolver> {
    Arc::new(GuardedResolver { allow_private })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inward_addresses_are_refused_and_public_ones_pass() {
        for inward in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "192.0.2.1",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!is_public(inward.parse().unwrap()), "{inward} passed");
        }
        for public in ["1.1.1.1", "8.8.8.8", "93.184.216.34", "2606:4700:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public} refused");
        }
    }

    #[tokio::test]
    async fn a_url_is_checked_without_resolving_a_literal() {
        let e = check_url("http://127.0.0.1:9/hook", false).await.unwrap_err();
        assert!(e.contains("--webhook-allow-private"), "{e}");
        assert!(check_url("http://127.0.0.1:9/hook", true).await.is_ok());
        assert!(check_url("ftp://1.1.1.1/", true).await.unwrap_err().contains("http"));
        assert!(check_url("https://u:p@1.1.1.1/", false).await.unwrap_err().contains("credentials"));
        assert!(check_url("https://1.1.1.1/hook", false).await.is_ok());
        let url = reqwest::Url::parse("http://[::1]:8/").unwrap();
        assert!(!literal_allowed(&url, false));
        assert!(literal_allowed(&url, true));
    }
}
