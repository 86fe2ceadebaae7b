//! Which peers may speak for clients: `X-Forwarded-*` headers are honoured only from the proxies an
//! operator lists in `trusted_proxies`; from anyone else they are a client's say-so and ignored, so
//! a client cannot choose the URLs binaryrepo hands out (realms, upload locations), the repository
//! a virtual host selects, the address its requests are logged and throttled under, or the keys
//! of the plan cache.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use http::HeaderMap;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// The configured proxy networks (CIDRs; a bare address is a single host). Empty by default:
/// nothing a client sends is taken as a proxy's word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

#[derive(Debug, thiserror::Error)]
#[error("trusted_proxies: {0:?} is not an address or CIDR (e.g. \"10.0.0.0/8\", \"127.0.0.1\")")]
pub struct BadProxy(String);

impl FromStr for TrustedProxies {
    type Err = BadProxy;

    /// Comma-separated, as on a command line.
    fn from_str(s: &str) -> Result<Self, BadProxy> {
        s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(parse_net).collect::<Result<Vec<_>, _>>().map(TrustedProxies)
    }
}

fn parse_net(s: &str) -> Result<IpNet, BadProxy> {
    s.parse::<IpNet>().or_else(|_| s.parse::<IpAddr>().map(IpNet::from)).map(|n| n.trunc()).map_err(|_| BadProxy(s.to_owned()))
}

impl<'de> Deserialize<'de> for TrustedProxies {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        list.iter().map(|s| parse_net(s.trim())).collect::<Result<Vec<_>, _>>().map(TrustedProxies).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&list.join(", "))
    }
}

impl TrustedProxies {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is one of the proxies (an IPv4 peer on a dual-stack socket counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        // The common case, and the default: no proxies, no work.
        if self.0.is_empty() {
            return false;
        }
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// The address a request came from: the TCP peer, or, when the peer is a trusted proxy, the
/// right-most `X-Forwarded-For` hop that is not itself a trusted proxy (hops further left were
/// written by whoever sent the request to the first proxy, and may be anything). A hop that is
/// not an address ends the walk at the last trusted one.
pub fn client_addr(peer: SocketAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let mut client = peer.ip().to_canonical();
    if !trusted.contains(client) {
        return client;
    }
    // Several X-Forwarded-For lines are one list, in order.
    let lines: Vec<&str> = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
    for hop in lines.iter().rev().flat_map(|line| line.rsplit(',')) {
        let Some(ip) = parse_hop(hop.trim()) else { break };
        client = ip;
        if !trusted.contains(ip) {
            break;
        }
    }
    client
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:5678`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    hop.parse::<SocketAddr>().ok().map(|a| a.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn peer(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap_or_else(|_| unreachable!()), 40000)
    }

    fn xff(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn proxies_parse_as_cidrs_or_addresses() {
        let t: TrustedProxies = "127.0.0.1, 10.0.0.0/8 ,::1, 192.168.1.7/24".parse().unwrap_or_default();
        assert!(t.contains("127.0.0.1".parse().unwrap_or_else(|_| unreachable!())));
        assert!(!t.contains("127.0.0.2".parse().unwrap_or_else(|_| unreachable!())));
        assert!(t.contains("10.200.3.4".parse().unwrap_or_else(|_| unreachable!())));
        assert!(t.contains("192.168.1.200".parse().unwrap_or_else(|_| unreachable!())), "host bits are dropped");
        assert!(t.contains("::ffff:10.1.1.1".parse().unwrap_or_else(|_| unreachable!())), "v4-mapped peers are v4");
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("proxy.example".parse::<TrustedProxies>().is_err());
        assert!(TrustedProxies::default().is_empty());
        let from_toml: Result<Wrapper, _> = toml::from_str("p = [\"10.0.0.0/8\", \"nope\"]");
        assert!(from_toml.is_err());
    }

    #[derive(Deserialize)]
    struct Wrapper {
        #[allow(dead_code)]
        p: TrustedProxies,
    }

    #[test]
    fn the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let none = TrustedProxies::default();
        let h = xff(&["203.0.113.9"]);
        assert_eq!(client_addr(peer("198.51.100.1"), &h, &none).to_string(), "198.51.100.1");
        let t: TrustedProxies = "10.0.0.0/8".parse().unwrap_or_default();
        assert_eq!(client_addr(peer("198.51.100.1"), &h, &t).to_string(), "198.51.100.1", "untrusted peer");
        assert_eq!(client_addr(peer("10.0.0.2"), &h, &t).to_string(), "203.0.113.9");
    }

    #[test]
    fn the_right_most_untrusted_hop_wins() {
        let t: TrustedProxies = "10.0.0.0/8".parse().unwrap_or_default();
        // the client forged the left-most entry; the proxies appended the rest
        let h = xff(&["6.6.6.6, 203.0.113.9", "10.1.1.1"]);
        assert_eq!(client_addr(peer("10.0.0.2"), &h, &t).to_string(), "203.0.113.9");
        // every hop a proxy: the left-most one
        let h = xff(&["10.9.9.9, 10.1.1.1"]);
        assert_eq!(client_addr(peer("10.0.0.2"), &h, &t).to_string(), "10.9.9.9");
        // garbage stops the walk at the last trusted hop
        let h = xff(&["203.0.113.9, unknown, 10.1.1.1"]);
        assert_eq!(client_addr(peer("10.0.0.2"), &h, &t).to_string(), "10.1.1.1");
        let h = xff(&["[2001:db8::7]:443, 198.51.100.4:80"]);
        assert_eq!(client_addr(peer("10.0.0.2"), &h, &t).to_string(), "198.51.100.4");
        assert_eq!(client_addr(peer("10.0.0.2"), &HeaderMap::new(), &t).to_string(), "10.0.0.2");
    }
}
