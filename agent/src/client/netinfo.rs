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
        let v4 = data.ip_networks().iter().find(|n| matches!(n.addr, IpAddr::V4(_)));
        let v6 = data.ip_networks().iter().find(|n| matches!(n.addr, IpAddr::V6(_)));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks_from_prefixes() {
        assert_eq!(netmask(24), "255.255.255.0");
        assert_eq!(netmask(0), "0.0.0.0");
        assert_eq!(netmask(32), "255.255.255.255");
        assert_eq!(netmask(20), "255.255.240.0");
    }
}
