//! The `upstream_allow_networks` setting's value type, in a file of its own so that the config
//! fuzz target compiles it unchanged (the resolver beside it in `egress.rs` needs the HTTP client).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

/// A network the operator allows remotes to reach though it is not public: a CIDR
/// (`10.0.0.0/8`, `fd00::/8`) or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct AllowedNetwork(IpNet);

impl TryFrom<String> for AllowedNetwork {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let s = s.trim();
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map(|n| AllowedNetwork(n.trunc()))
            .map_err(|_| format!("{s:?} is not a network: use a CIDR such as \"10.0.0.0/8\" or an address"))
    }
}

impl AllowedNetwork {
    pub fn net(&self) -> IpNet {
        self.0
    }
}
