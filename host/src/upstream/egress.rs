//! What a remote may reach. A repository's requests go to its remote's origin and to the token
//! realms that remote named, over the remote's scheme or stronger. Redirects are followed for
//! GET and HEAD only (blobs and documents), at most `MAX_REDIRECTS` hops, never from https to
//! http, and lose every credential once they leave the first request's origin. Whatever is not
//! on the remote's own host (a realm elsewhere, a redirect to a CDN) must resolve to a public
//! address, or to a network the operator allowed with `upstream_allow_networks`: a remote must
//! not be able to point binaryrepo at loopback, the LAN or a cloud metadata service.
//!
//! Addresses are checked where they are used: the client for checked hops resolves names
//! through `GuardedResolver`, and the connector connects only to the addresses it returned, so
//! a name that resolves to a public address when asked and to 127.0.0.1 a moment later (DNS
//! rebinding) is never connected to its second answer. IP literals never reach a resolver, so
//! `AddressPolicy::check_literal` covers them before the request is sent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

pub use super::allowed_network::AllowedNetwork;
use super::{UpstreamError, origin};

/// Redirect hops followed for one request; Docker Hub needs one (registry → CDN).
pub const MAX_REDIRECTS: usize = 5;

/// Loopback, private, link-local, shared, multicast and reserved IPv4 ranges: nothing a public
/// registry or CDN lives on.
const INTERNAL_V4: [Ipv4Net; 15] = [
    Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10),
    Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16),
    Ipv4Net::new_assert(Ipv4Addr::new(172, 16, 0, 0), 12),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 0, 0, 0), 24),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 0, 2, 0), 24),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 88, 99, 0), 24),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 0, 0), 16),
    Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), 15),
    Ipv4Net::new_assert(Ipv4Addr::new(198, 51, 100, 0), 24),
    Ipv4Net::new_assert(Ipv4Addr::new(203, 0, 113, 0), 24),
    Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4),
    Ipv4Net::new_assert(Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// The IPv6 counterparts. Forms that embed an IPv4 address are judged by that address
/// (`embedded_v4`); Teredo (2001::/32) hides it, so it is refused whole.
const INTERNAL_V6: [Ipv6Net; 11] = [
    Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 128),
    Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128),
    Ipv6Net::new_assert(Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),
    Ipv6Net::new_assert(Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),
    Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32),
    Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
    Ipv6Net::new_assert(Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),
    Ipv6Net::new_assert(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    Ipv6Net::new_assert(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    Ipv6Net::new_assert(Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),
    Ipv6Net::new_assert(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

/// The IPv4 address inside an IPv6 one that carries it: mapped (::ffff:a.b.c.d), translated
/// (::ffff:0:a.b.c.d), compatible (::a.b.c.d), NAT64 (64:ff9b::a.b.c.d) and 6to4 (2002:ab:cd::).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let o = v6.octets();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let translated = s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0;
    // :: and ::1 are IPv6's own unspecified and loopback addresses, judged as such.
    let compatible = s[..6] == [0; 6] && !v6.is_unspecified() && !v6.is_loopback();
    let nat64 = s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4];
    if translated || compatible || nat64 {
        return Some(tail);
    }
    (s[0] == 0x2002).then(|| Ipv4Addr::new(o[2], o[3], o[4], o[5]))
}

/// Whether `ip` is anything but a public unicast address.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => INTERNAL_V4.iter().any(|n| n.contains(&v4)),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_internal(IpAddr::V4(v4)),
            None => INTERNAL_V6.iter().any(|n| n.contains(&v6)),
        },
    }
}

/// An IPv4 address written as IPv6 is the IPv4 address, so an allowed IPv4 network covers both.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The target's fault: a remote (its realm or its redirect) led to an address it may not reach.
#[derive(Debug, thiserror::Error)]
#[error("{host} is {addrs}, which a remote may not reach (not public; upstream_allow_networks can allow it)")]
pub struct Blocked {
    host: String,
    addrs: String,
}

/// Which addresses checked hops may reach.
#[derive(Debug, Default)]
pub struct AddressPolicy {
    allowed: Vec<IpNet>,
}

impl AddressPolicy {
    pub fn new(allowed: &[AllowedNetwork]) -> AddressPolicy {
        AddressPolicy { allowed: allowed.iter().map(AllowedNetwork::net).collect() }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        !is_internal(ip) || self.allowed.iter().any(|n| n.contains(&ip))
    }

    /// A URL whose host is an address literal (the connector does not resolve those).
    pub fn check_literal(&self, url: &Url) -> Result<(), Blocked> {
        let ip = match url.host() {
            Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
            _ => return Ok(()),
        };
        if self.permits(ip) {
            return Ok(());
        }
        Err(Blocked { host: url.host_str().unwrap_or_default().to_owned(), addrs: ip.to_string() })
    }
}

/// The resolver of the client for checked hops: only permitted addresses come back.
pub struct GuardedResolver {
    pub policy: Arc<AddressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (permitted, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = found.into_iter().partition(|a| policy.permits(a.ip()));
            if permitted.is_empty() && !refused.is_empty() {
                let addrs = refused.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", ");
                return Err(Box::new(Blocked { host, addrs }) as Box<dyn std::error::Error + Send + Sync>);
            }
            if !refused.is_empty() {
                tracing::debug!(
                    host,
                    refused = refused.len(),
                    "upstream name resolved partly to addresses a remote may not reach; skipped"
                );
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

/// The egress rules for one request or redirect hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    /// Its addresses must pass the `AddressPolicy` (everything not on the remote's own host).
    pub checked: bool,
    /// The repository's configured credentials may go along.
    pub credentials: bool,
}

/// The first hop of a request a plugin asked for. `named_realm`: the remote named the target's
/// origin as a token realm.
pub fn first_hop(remote: &Url, target: &Url, named_realm: bool, repo: &str) -> Result<Hop, UpstreamError> {
    if origin(target) == origin(remote) {
        return Ok(Hop { checked: false, credentials: true });
    }
    if !named_realm {
        return Err(UpstreamError::NotAllowed(format!("{} is neither the remote of {repo} nor a realm it named", origin(target))));
    }
    let https = target.scheme() == "https";
    if remote.scheme() == "https" && !https {
        return Err(UpstreamError::Refused(format!(
            "the remote of {repo} named the realm {} over http; its requests keep https",
            origin(target)
        )));
    }
    // A realm on the remote's host is where the operator pointed the repository, like the
    // remote itself (a token service on another port of the same registry host).
    Ok(Hop { checked: target.host() != remote.host(), credentials: https })
}

/// Where a redirect answer sends a GET or HEAD next, if it is one.
pub fn redirect_location(status: StatusCode, headers: &HeaderMap) -> Option<&str> {
    let redirect = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
    redirect.then(|| headers.get(http::header::LOCATION).and_then(|v| v.to_str().ok())).flatten()
}

/// The next hop of a redirect from `from` to `location`. Only the remote's own origin is reached
/// unchecked and gets the configured credentials.
pub fn next_hop(remote: &Url, from: &Url, location: &str) -> Result<(Url, Hop), UpstreamError> {
    let mut next = from.join(location).map_err(|e| UpstreamError::Refused(format!("redirect to {location:?}: {e}")))?;
    match (from.scheme(), next.scheme()) {
        ("https", "https") | ("http", "http" | "https") => {}
        ("https", "http") => return Err(UpstreamError::Refused(format!("redirect from https to http ({})", origin(&next)))),
        (_, other) => return Err(UpstreamError::Refused(format!("redirect to a {other}: URL"))),
    }
    // User information in a Location would become Basic credentials for its host.
    let _ = next.set_username("");
    let _ = next.set_password(None);
    next.set_fragment(None);
    let own = origin(&next) == origin(remote);
    Ok((next, Hop { checked: !own, credentials: own }))
}

/// Removes what authenticates the caller from headers that leave their origin.
pub fn strip_credentials(headers: &mut HeaderMap) {
    for name in [http::header::AUTHORIZATION, http::header::PROXY_AUTHORIZATION, http::header::COOKIE] {
        headers.remove(name);
    }
}

/// The `Blocked` error somewhere in an error's chain of causes.
pub fn blocked_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Blocked> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(b) = c.downcast_ref::<Blocked>() {
            return Some(b);
        }
        cause = c.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn internal_addresses_in_every_spelling() {
        for a in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:7f00:1::",
            "2001::1",
        ] {
            assert!(is_internal(ip(a)), "{a} counts as public");
        }
        for a in ["1.1.1.1", "104.16.1.1", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "64:ff9b::8.8.8.8", "::ffff:8.8.8.8"] {
            assert!(!is_internal(ip(a)), "{a} counts as internal");
        }
    }

    #[test]
    fn allowed_networks_open_only_themselves_in_either_spelling() {
        let allowed: Vec<AllowedNetwork> =
            ["10.0.0.0/8", " 192.168.7.9 ", "fd00::/8"].into_iter().map(|s| AllowedNetwork::try_from(s.to_owned()).unwrap()).collect();
        let p = AddressPolicy::new(&allowed);
        assert!(p.permits(ip("10.9.9.9")) && p.permits(ip("::ffff:10.9.9.9")) && p.permits(ip("192.168.7.9")) && p.permits(ip("fd00::5")));
        assert!(!p.permits(ip("192.168.7.10")) && !p.permits(ip("127.0.0.1")) && !p.permits(ip("fe80::1")));
        assert!(p.permits(ip("1.1.1.1")));
        let err = AllowedNetwork::try_from("10.0.0.0/33".to_owned()).unwrap_err();
        assert!(err.contains("not a network"), "{err}");
        assert!(AllowedNetwork::try_from("intranet".to_owned()).is_err());
    }

    #[test]
    fn literal_hosts_are_checked_in_every_url_spelling() {
        let p = AddressPolicy::default();
        for u in ["http://127.0.0.1:5000/", "http://2130706433/", "http://0x7f.1/", "http://[::ffff:127.0.0.1]/", "http://[::1]:80/"] {
            assert!(p.check_literal(&url(u)).is_err(), "{u}");
        }
        // names are the resolver's to check
        assert!(p.check_literal(&url("http://localhost/")).is_ok() && p.check_literal(&url("https://1.1.1.1/")).is_ok());
    }

    #[tokio::test]
    async fn the_guarded_resolver_refuses_names_of_internal_addresses() {
        let r = GuardedResolver { policy: Arc::new(AddressPolicy::default()) };
        let err = r.resolve("localhost".parse().unwrap()).await.err().expect("localhost resolved");
        assert!(blocked_in(err.as_ref()).is_some(), "{err}");
        let open = GuardedResolver {
            policy: Arc::new(AddressPolicy::new(&[
                AllowedNetwork::try_from("127.0.0.0/8".to_owned()).unwrap(),
                AllowedNetwork::try_from("::1".to_owned()).unwrap(),
            ])),
        };
        let addrs: Vec<_> = open.resolve("localhost".parse().unwrap()).await.unwrap().collect();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    #[test]
    fn the_remote_gets_credentials_and_is_not_checked() {
        let remote = url("http://127.0.0.1:5000");
        assert_eq!(first_hop(&remote, &url("http://127.0.0.1:5000/v2/x"), false, "r").unwrap(), Hop { checked: false, credentials: true });
        assert!(matches!(first_hop(&remote, &url("http://127.0.0.1:6000/token"), false, "r"), Err(UpstreamError::NotAllowed(_))));
    }

    #[test]
    fn realms_get_credentials_only_over_https_and_are_checked_off_the_remote_host() {
        let remote = url("http://registry.example:5000");
        // another port of the remote's host over http: reached, no credentials
        assert_eq!(
            first_hop(&remote, &url("http://registry.example:6000/t"), true, "r").unwrap(),
            Hop { checked: false, credentials: false }
        );
        // another host over https: checked, credentials
        assert_eq!(first_hop(&remote, &url("https://auth.example/t"), true, "r").unwrap(), Hop { checked: true, credentials: true });
        assert_eq!(first_hop(&remote, &url("http://auth.example/t"), true, "r").unwrap(), Hop { checked: true, credentials: false });
        // an https remote's realm stays https
        let secure = url("https://registry.example");
        assert!(matches!(first_hop(&secure, &url("http://registry.example/t"), true, "r"), Err(UpstreamError::Refused(_))));
        assert!(first_hop(&secure, &url("https://auth.example/t"), true, "r").unwrap().credentials);
    }

    #[test]
    fn redirects_keep_https_and_only_the_remote_origin_is_unchecked() {
        let remote = url("https://registry.example");
        let from = url("https://registry.example/v2/x/blobs/sha256:1");
        let (next, hop) = next_hop(&remote, &from, "https://cdn.example/b?sig=1").unwrap();
        assert_eq!((next.as_str(), hop), ("https://cdn.example/b?sig=1", Hop { checked: true, credentials: false }));
        let (next, hop) = next_hop(&remote, &from, "/storage/1").unwrap();
        assert_eq!((next.as_str(), hop), ("https://registry.example/storage/1", Hop { checked: false, credentials: true }));
        // same host, other port: another origin
        assert!(next_hop(&remote, &from, "https://registry.example:8443/b").unwrap().1.checked);
        for bad in ["http://cdn.example/b", "http://registry.example/b", "file:///etc/passwd", "ftp://cdn.example/b"] {
            assert!(matches!(next_hop(&remote, &from, bad), Err(UpstreamError::Refused(_))), "{bad}");
        }
        let (next, _) = next_hop(&remote, &from, "https://user:pw@cdn.example/b#f").unwrap();
        assert_eq!(next.as_str(), "https://cdn.example/b");
        // http may go up to https
        assert!(next_hop(&url("http://r.example"), &url("http://r.example/x"), "https://cdn.example/").is_ok());
    }

    #[test]
    fn redirects_are_the_five_statuses_with_a_location() {
        let mut h = HeaderMap::new();
        h.insert(http::header::LOCATION, "/b".parse().unwrap());
        for s in [301, 302, 303, 307, 308] {
            assert_eq!(redirect_location(StatusCode::from_u16(s).unwrap(), &h), Some("/b"));
        }
        assert_eq!(redirect_location(StatusCode::NOT_MODIFIED, &h), None);
        assert_eq!(redirect_location(StatusCode::OK, &h), None);
        assert_eq!(redirect_location(StatusCode::FOUND, &HeaderMap::new()), None);
    }

    #[test]
    fn credentials_are_stripped_from_headers_that_leave_their_origin() {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, "Bearer t".parse().unwrap());
        h.insert(http::header::COOKIE, "a=b".parse().unwrap());
        h.insert(http::header::ACCEPT, "*/*".parse().unwrap());
        strip_credentials(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(http::header::ACCEPT));
    }
}
