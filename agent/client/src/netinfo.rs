//! The machine's network interfaces as ClientAnnounce's `NetworkDevice` elements.

use std::net::IpAddr;

use serde_json::{Map, Value, json};

/// The dotted netmask of an IPv4 prefix length.
fn netmask(prefix: u8) -> String {
    let bits = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
    std::net::Ipv4Addr::from(bits).to_string()
}

/// One entry per interface except loopback: `Name`, first `IPAddress` and `Netmask`,
/// first `IPv6Address`, `MAC`, in the order the schema wants them.
pub fn network_information() -> Vec<Value> {
    let networks = sysinfo::Networks::new_with_refreshed_list();
    let mut devices: Vec<(String, Value)> = Vec::new();
    for (name, data) in &networks {
        if name == "lo" {
            continue;
        }
        let mut device = Map::from_iter([("Name".to_owned(), json!(name))]);
        let v4 = preferred(data.ip_networks(), |a| a.is_ipv4());
        let v6 = preferred(data.ip_networks(), |a| a.is_ipv6());
        if let Some(net) = v4 {
            device.insert("IPAddress".into(), json!(net.addr.to_string()));
        }
        if let Some(net) = v6 {
            device.insert("IPv6Address".into(), json!(net.addr.to_string()));
        }
        let mac = data.mac_address();
        if !mac.is_unspecified() {
            device.insert("MAC".into(), json!(mac.to_string()));
        }
        if let Some(net) = v4 {
            device.insert("Netmask".into(), json!(netmask(net.prefix)));
        }
        devices.push((name.clone(), Value::Object(device)));
    }
    devices.sort_by(|a, b| a.0.cmp(&b.0));
    devices.into_iter().map(|(_, d)| d).collect()
}

/// The address an interface is shown with, among those `family` accepts: global before
/// link-local, then the lowest. sysinfo hands the addresses over in a different order on
/// every call, and the inventory checksum must not change with it.
fn preferred(networks: &[sysinfo::IpNetwork], family: impl Fn(&IpAddr) -> bool) -> Option<&sysinfo::IpNetwork> {
    let link_local = |a: &IpAddr| match a {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    networks.iter().filter(|n| family(&n.addr)).min_by_key(|n| (link_local(&n.addr), n.addr, n.prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shown_address_does_not_depend_on_the_listing_order() {
        let net =
            |text: &str, prefix| sysinfo::IpNetwork { addr: text.parse().unwrap_or_else(|e| panic!("{e}")), prefix };
        let mut networks =
            vec![net("fe80::fc:ff:fe00:1", 64), net("fd00::2", 64), net("192.0.2.2", 24), net("10.0.0.9", 8)];
        for _ in 0..networks.len() {
            networks.rotate_left(1);
            assert_eq!(preferred(&networks, IpAddr::is_ipv6).map(|n| n.addr.to_string()), Some("fd00::2".to_owned()));
            assert_eq!(preferred(&networks, IpAddr::is_ipv4).map(|n| n.addr.to_string()), Some("10.0.0.9".to_owned()));
        }
    }

    #[test]
    fn netmasks_from_prefixes() {
        assert_eq!(netmask(24), "255.255.255.0");
        assert_eq!(netmask(0), "0.0.0.0");
        assert_eq!(netmask(32), "255.255.255.255");
        assert_eq!(netmask(20), "255.255.240.0");
    }
}
