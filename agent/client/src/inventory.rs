//! The client's inventory, collected natively: operating system, CPUs, memory, disks,
//! network interfaces, installed packages (dpkg or rpm) and running services
//! (systemd). It becomes an `Inventory` event only when its checksum changed — the
//! checksum leaves out what changes by itself (free disk space).

use std::time::Duration;

use serde_json::{Map, Value, json};
use sha2::Digest;

/// How long the package and service listings may take.
const LISTING_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a listing program; `None` when it is missing, fails or takes too long.
async fn listing(program: &str, args: &[&str]) -> Option<String> {
    let run = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(LISTING_TIMEOUT, run).await.ok()?.ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Installed packages from dpkg, else rpm: `{Name, Version, Architecture}`.
async fn packages() -> Vec<Value> {
    let rows =
        match listing("dpkg-query", &["-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n"])
            .await
        {
            // Only installed ones ("ii"), not removed packages whose configuration remains.
            Some(text) => text
                .lines()
                .filter_map(|l| l.strip_prefix("ii "))
                .map(|l| l.trim_start().split('\t').map(str::to_owned).collect::<Vec<_>>())
                .collect::<Vec<_>>(),
            None => listing("rpm", &["-qa", "--qf", "%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\t%{ARCH}\n"])
                .await
                .map(|text| text.lines().map(|l| l.split('\t').map(str::to_owned).collect()).collect())
                .unwrap_or_default(),
        };
    let mut packages: Vec<Value> = rows
        .into_iter()
        .filter(|r| r.len() >= 2 && !r[0].is_empty())
        .map(|r| {
            let mut p = json!({"Name": r[0], "Version": r[1]});
            if let Some(arch) = r.get(2).filter(|a| !a.is_empty()) {
                p["Architecture"] = json!(arch);
            }
            p
        })
        .collect();
    packages.sort_by(|a, b| {
        a["Name"].as_str().cmp(&b["Name"].as_str()).then(a["Architecture"].as_str().cmp(&b["Architecture"].as_str()))
    });
    packages
}

/// Running services from systemd: `{Name, State}`.
async fn services() -> Vec<Value> {
    let Some(text) = listing(
        "systemctl",
        &["list-units", "--type=service", "--state=running", "--no-legend", "--plain", "--no-pager"],
    )
    .await
    else {
        return Vec::new();
    };
    let mut services: Vec<Value> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|unit| json!({"Name": unit.trim_end_matches(".service"), "State": "running"}))
        .collect();
    services.sort_by(|a, b| a["Name"].as_str().cmp(&b["Name"].as_str()));
    services
}

/// Everything but the checksum, in the schema's order.
pub async fn collect(client_id: &str) -> Map<String, Value> {
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    system.refresh_cpu_all();
    let mut fields = Map::new();
    fields.insert("ClientUUID".into(), json!(client_id));
    fields.insert("Hostname".into(), json!(super::daemon::host_name()));
    let mut os = json!({"Name": sysinfo::System::name().unwrap_or_else(|| std::env::consts::OS.to_owned())});
    if let Some(version) = sysinfo::System::os_version() {
        os["Version"] = json!(version);
    }
    if let Some(kernel) = sysinfo::System::kernel_version() {
        os["Kernel"] = json!(kernel);
    }
    os["Architecture"] = json!(sysinfo::System::cpu_arch());
    fields.insert("OperatingSystem".into(), os);
    let model = system.cpus().first().map(|c| c.brand().trim().to_owned()).unwrap_or_default();
    let mut cpu = json!({"Model": if model.is_empty() { "unknown".to_owned() } else { model }});
    if let Some(cores) = sysinfo::System::physical_core_count() {
        cpu["Cores"] = json!(cores);
    }
    fields.insert("Cpu".into(), json!([cpu]));
    fields.insert("Memory".into(), json!({"TotalBytes": system.total_memory()}));
    let disks = sysinfo::Disks::new_with_refreshed_list();
    let mut disk_rows: Vec<Value> = disks
        .list()
        .iter()
        .filter(|d| is_storage(&d.file_system().to_string_lossy()))
        .map(|d| {
            json!({
                "Device": d.name().to_string_lossy(), "MountPoint": d.mount_point().to_string_lossy(),
                "SizeBytes": d.total_space(), "FreeBytes": d.available_space(),
            })
        })
        .collect();
    disk_rows.sort_by(|a, b| a["MountPoint"].as_str().cmp(&b["MountPoint"].as_str()));
    fields.insert("Disk".into(), Value::Array(disk_rows));
    let interfaces: Vec<Value> = super::netinfo::network_information()
        .into_iter()
        .map(|d| {
            let addresses: Vec<Value> =
                ["IPAddress", "IPv6Address"].iter().filter_map(|k| d.get(*k).cloned()).collect();
            let mut row = json!({"Name": d["Name"], "Address": addresses});
            if let Some(mac) = d.get("MAC") {
                row["MAC"] = mac.clone();
            }
            row
        })
        .collect();
    fields.insert("NetworkInterface".into(), Value::Array(interfaces));
    fields.insert("Package".into(), Value::Array(packages().await));
    fields.insert("Service".into(), Value::Array(services().await));
    fields
}

/// Whether a file system type is storage worth listing: memory-backed and pseudo file
/// systems (tmpfs, overlay layers, snap images) come and go with containers and
/// sandboxes, and would change the inventory's checksum without anything installed.
fn is_storage(file_system: &str) -> bool {
    const VOLATILE: &[&str] = &[
        "tmpfs",
        "devtmpfs",
        "ramfs",
        "overlay",
        "squashfs",
        "proc",
        "sysfs",
        "cgroup",
        "cgroup2",
        "devpts",
        "fuse.snapfuse",
    ];
    !VOLATILE.contains(&file_system)
}

/// The checksum of an inventory: SHA-256 over its JSON without `Checksum` and the
/// volatile `FreeBytes`, hex.
pub fn checksum(fields: &Map<String, Value>) -> String {
    let mut stable = fields.clone();
    stable.remove("Checksum");
    if let Some(Value::Array(disks)) = stable.get_mut("Disk") {
        for disk in disks.iter_mut().filter_map(Value::as_object_mut) {
            disk.remove("FreeBytes");
        }
    }
    // serde_json's map is ordered by key, so the text is canonical.
    let text = Value::Object(stable).to_string();
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn this_machine_is_inventoried_and_free_space_does_not_change_the_checksum() {
        let mut fields = collect("c1").await;
        assert_eq!(fields["ClientUUID"], json!("c1"));
        assert!(fields["OperatingSystem"]["Name"].is_string());
        assert!(fields["Memory"]["TotalBytes"].as_u64().is_some_and(|m| m > 0));
        // The build machine is Debian: dpkg knows itself.
        let packages = fields["Package"].as_array().cloned().unwrap_or_default();
        assert!(packages.iter().any(|p| p["Name"] == json!("dpkg")), "{} packages", packages.len());
        let before = checksum(&fields);
        if let Some(Value::Array(disks)) = fields.get_mut("Disk")
            && let Some(first) = disks.first_mut()
        {
            first["FreeBytes"] = json!(1);
        }
        assert_eq!(checksum(&fields), before);
        fields.insert("Hostname".into(), json!("renamed"));
        assert_ne!(checksum(&fields), before);
    }

    #[tokio::test]
    async fn collecting_twice_gives_the_same_checksum() {
        for _ in 0..5 {
            assert_eq!(checksum(&collect("c1").await), checksum(&collect("c1").await));
        }
    }

    #[test]
    fn memory_file_systems_are_not_disks() {
        assert!(is_storage("ext4") && is_storage("xfs"));
        assert!(!is_storage("tmpfs") && !is_storage("overlay"));
    }
}
