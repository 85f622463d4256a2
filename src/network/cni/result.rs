//! CNI results: a plugin's ADD output normalised to the list's `cniVersion`
//! (what libcni's `NewResult` + `GetAsVersion` do for 0.2.0 … 1.1.0), and the
//! pod's IPs and interfaces read from the final result.

use std::net::IpAddr;

use serde_json::{Map, Value};

use super::config::version_ge;

/// An interface of a CNI result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// Empty when the result gives none.
    pub mac: String,
    /// The netns path for interfaces inside the sandbox; empty for host ones.
    pub sandbox: String,
}

/// What an ADD gave the pod.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkStatus {
    pub network_name: String,
    /// The pod's IPs: those on the sandbox interface, in result order, IPv4
    /// before IPv6 (kubelet takes the first as the primary). May be empty if the
    /// plugins assigned none.
    pub ips: Vec<IpAddr>,
    pub interfaces: Vec<Interface>,
    /// The final result (in the list's cniVersion).
    pub raw: Value,
}

/// The address of a CIDR (`10.0.0.2/24` → `10.0.0.2`); a bare address is accepted.
pub(super) fn cidr_ip(s: &str) -> Option<IpAddr> {
    s.split('/').next()?.parse().ok()
}

/// Parses a plugin's ADD output and converts it to `target` (the list's
/// cniVersion): 0.1/0.2 `ip4`/`ip6` become `ips`, `ips[].version` is added for
/// 0.3.x/0.4.0 and dropped for 1.x, `cniVersion` is set to `target`.
pub(super) fn normalise(out: &[u8], target: &str) -> Result<Value, String> {
    let out = out.trim_ascii();
    if out.is_empty() {
        return Err("no result on stdout".into());
    }
    let value: Value =
        serde_json::from_slice(out).map_err(|e| format!("result is not JSON: {e}"))?;
    let Value::Object(mut r) = value else {
        return Err("result is not a JSON object".into());
    };
    if !version_ge(target, "0.3.0") {
        // A legacy single-plugin network: nothing chains on it; keep as is.
        return Ok(Value::Object(r));
    }
    if !r.contains_key("ips") && (r.contains_key("ip4") || r.contains_key("ip6")) {
        r = from_legacy(r);
    }
    if let Some(Value::Array(ips)) = r.get_mut("ips") {
        for ip in ips.iter_mut().filter_map(Value::as_object_mut) {
            if version_ge(target, "1.0.0") {
                ip.remove("version");
            } else if !ip.contains_key("version")
                && let Some(a) = ip.get("address").and_then(Value::as_str).and_then(cidr_ip)
            {
                let v = if a.is_ipv4() { "4" } else { "6" };
                ip.insert("version".into(), Value::String(v.into()));
            }
        }
    }
    r.insert("cniVersion".into(), Value::String(target.into()));
    Ok(Value::Object(r))
}

/// 0.1.0/0.2.0 → 0.3.0 shape.
fn from_legacy(mut r: Map<String, Value>) -> Map<String, Value> {
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    for (key, version) in [("ip4", "4"), ("ip6", "6")] {
        let Some(Value::Object(mut cfg)) = r.remove(key) else {
            continue;
        };
        let mut ip = Map::new();
        ip.insert("version".into(), Value::String(version.into()));
        if let Some(a) = cfg.remove("ip") {
            ip.insert("address".into(), a);
        }
        if let Some(g) = cfg.remove("gateway") {
            ip.insert("gateway".into(), g);
        }
        ips.push(Value::Object(ip));
        if let Some(Value::Array(rs)) = cfg.remove("routes") {
            routes.extend(rs);
        }
    }
    r.insert("ips".into(), Value::Array(ips));
    if !routes.is_empty() {
        r.insert("routes".into(), Value::Array(routes));
    }
    r
}

/// Reads interfaces and the pod's IPs from a (normalised) result. IPs are taken,
/// in order of preference, from: the sandbox interface named `ifname`, any
/// sandbox interface, all IPs (plugins that give no interface index). Within
/// that set: result order, IPv4 before IPv6.
pub(super) fn network_status(network_name: &str, ifname: &str, result: &Value) -> NetworkStatus {
    let str_of = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let interfaces: Vec<Interface> = result
        .get("interfaces")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|i| Interface {
                    name: str_of(i, "name"),
                    mac: str_of(i, "mac"),
                    sandbox: str_of(i, "sandbox"),
                })
                .collect()
        })
        .unwrap_or_default();

    // (address, interface index)
    let mut all: Vec<(IpAddr, Option<usize>)> = Vec::new();
    if let Some(ips) = result.get("ips").and_then(Value::as_array) {
        for ip in ips {
            if let Some(a) = ip.get("address").and_then(Value::as_str).and_then(cidr_ip) {
                let idx = ip
                    .get("interface")
                    .and_then(Value::as_u64)
                    .map(|i| i as usize);
                all.push((a, idx));
            }
        }
    } else {
        // Legacy result of a 0.1/0.2 network.
        for key in ["ip4", "ip6"] {
            if let Some(a) = result
                .get(key)
                .and_then(|c| c.get("ip"))
                .and_then(Value::as_str)
                .and_then(cidr_ip)
            {
                all.push((a, None));
            }
        }
    }
    let iface = |idx: Option<usize>| idx.and_then(|i| interfaces.get(i));
    let on_named =
        |idx: Option<usize>| iface(idx).is_some_and(|i| !i.sandbox.is_empty() && i.name == ifname);
    let on_sandbox = |idx: Option<usize>| iface(idx).is_some_and(|i| !i.sandbox.is_empty());
    let pick: Vec<IpAddr> = [
        &on_named as &dyn Fn(Option<usize>) -> bool,
        &on_sandbox,
        &|_| true,
    ]
    .iter()
    .map(|keep| {
        all.iter()
            .filter(|(_, idx)| keep(*idx))
            .map(|(a, _)| *a)
            .collect::<Vec<_>>()
    })
    .find(|v| !v.is_empty())
    .unwrap_or_default();
    let mut ips: Vec<IpAddr> = Vec::with_capacity(pick.len());
    for a in pick
        .iter()
        .filter(|a| a.is_ipv4())
        .chain(pick.iter().filter(|a| a.is_ipv6()))
    {
        if !ips.contains(a) {
            ips.push(*a);
        }
    }
    NetworkStatus {
        network_name: network_name.to_string(),
        ips,
        interfaces,
        raw: result.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normalise_table() {
        // (target, plugin output, expected normalised result or error part)
        let cases: Vec<(&str, &str, Result<Value, &str>)> = vec![
            (
                "1.0.0",
                r#"{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.0.0.2/24","interface":1}]}"#,
                Ok(json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24","interface":1}]})),
            ),
            (
                "0.4.0",
                r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"},{"address":"fd00::2/64"}]}"#,
                Ok(
                    json!({"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.0.0.2/24"},{"version":"6","address":"fd00::2/64"}]}),
                ),
            ),
            (
                "0.3.1",
                r#"{"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.2/24","gateway":"10.0.0.1","routes":[{"dst":"0.0.0.0/0"}]},"dns":{"nameservers":["1.1.1.1"]}}"#,
                Ok(
                    json!({"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.0.0.2/24","gateway":"10.0.0.1"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["1.1.1.1"]}}),
                ),
            ),
            (
                "1.0.0",
                r#"  {"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"dns":{}}
"#,
                Ok(json!({"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"dns":{}})),
            ),
            (
                "0.2.0",
                r#"{"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.2/24"}}"#,
                Ok(json!({"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.2/24"}})),
            ),
            ("1.0.0", "", Err("no result")),
            ("1.0.0", "ok", Err("not JSON")),
            ("1.0.0", "[]", Err("not a JSON object")),
        ];
        for (target, out, want) in cases {
            match (normalise(out.as_bytes(), target), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{out}"),
                (Err(got), Err(part)) => assert!(got.contains(part), "{out}: {got}"),
                (got, want) => panic!("{out}: got {got:?}, want {want:?}"),
            }
        }
    }

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn pod_ips_table() {
        let bridge_ifaces = json!([
            {"name":"cni0","mac":"aa:aa:aa:aa:aa:01"},
            {"name":"veth1234","mac":"aa:aa:aa:aa:aa:02"},
            {"name":"eth0","mac":"aa:aa:aa:aa:aa:03","sandbox":"/run/netns/x"},
            {"name":"net1","sandbox":"/run/netns/x"}
        ]);
        // (result, expected pod IPs)
        let cases: Vec<(Value, Vec<IpAddr>)> = vec![
            // bridge: the IP on eth0 (index 2)
            (
                json!({"interfaces":bridge_ifaces,"ips":[{"address":"10.88.0.5/16","gateway":"10.88.0.1","interface":2}]}),
                ips(&["10.88.0.5"]),
            ),
            // dual stack, v6 listed first: v4 first
            (
                json!({"interfaces":bridge_ifaces,"ips":[{"address":"fd00::5/64","interface":2},{"address":"10.88.0.5/16","interface":2}]}),
                ips(&["10.88.0.5", "fd00::5"]),
            ),
            // order as returned within a family
            (
                json!({"interfaces":bridge_ifaces,"ips":[{"address":"10.1.0.2/24","interface":2},{"address":"fd00::5/64","interface":2},{"address":"10.2.0.2/24","interface":2}]}),
                ips(&["10.1.0.2", "10.2.0.2", "fd00::5"]),
            ),
            // an IP on the host side (the bridge) is not the pod's
            (
                json!({"interfaces":bridge_ifaces,"ips":[{"address":"10.88.0.1/16","interface":0},{"address":"10.88.0.5/16","interface":2}]}),
                ips(&["10.88.0.5"]),
            ),
            // eth0 preferred over another sandbox interface
            (
                json!({"interfaces":bridge_ifaces,"ips":[{"address":"10.9.0.9/24","interface":3},{"address":"10.88.0.5/16","interface":2}]}),
                ips(&["10.88.0.5"]),
            ),
            // only another sandbox interface has IPs
            (
                json!({"interfaces":bridge_ifaces,"ips":[{"address":"10.9.0.9/24","interface":3},{"address":"10.88.0.1/16","interface":0}]}),
                ips(&["10.9.0.9"]),
            ),
            // no interface index at all: every IP
            (
                json!({"ips":[{"address":"fd00::5/64"},{"address":"10.0.0.2/8"}]}),
                ips(&["10.0.0.2", "fd00::5"]),
            ),
            // index out of range, garbage address, duplicates
            (
                json!({"interfaces":[],"ips":[{"address":"10.0.0.2/8","interface":7},{"address":"bogus"},{"address":"10.0.0.2/8"}]}),
                ips(&["10.0.0.2"]),
            ),
            // legacy
            (
                json!({"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.2/24"},"ip6":{"ip":"fd00::2/64"}}),
                ips(&["10.0.0.2", "fd00::2"]),
            ),
            (json!({"cniVersion":"1.0.0"}), vec![]),
        ];
        for (result, want) in cases {
            let st = network_status("net", "eth0", &result);
            assert_eq!(st.ips, want, "{result}");
            assert_eq!(st.raw, result);
            assert_eq!(st.network_name, "net");
        }
        let st = network_status("net", "eth0", &json!({"interfaces": bridge_ifaces}));
        assert_eq!(
            st.interfaces[2],
            Interface {
                name: "eth0".into(),
                mac: "aa:aa:aa:aa:aa:03".into(),
                sandbox: "/run/netns/x".into()
            }
        );
        assert_eq!(st.interfaces[0].sandbox, "");
    }
}
