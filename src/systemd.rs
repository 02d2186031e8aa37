//! The systemd cgroup driver's D-Bus side: with `cgroup_driver =
//! "systemd"`, each container's cgroup is a transient scope unit
//! (`ketch-<id>.scope`) in its pod's slice, made with
//! `StartTransientUnit` and `Delegate=yes`, so systemd knows the cgroup
//! is there and leaves what is below it to ketch (`systemctl status`
//! shows it; a `daemon-reload` does not reset its limits).
//!
//! As runc's systemd driver does, the limits systemd has properties for
//! (memory, CPU weight and quota, tasks) are set as unit properties
//! ([`limit_properties`]) and every limit is also written to the cgroup
//! files by the cgroup manager, which covers what systemd has no
//! property for.
//!
//! A scope must hold a process when it starts: the daemon starts it with
//! a placeholder process (the caller's), into whose cgroup the container's
//! process is put; the placeholder is then let go.
//!
//! ketch reaches the manager through a bus (the system bus by default, as
//! runc and containerd do). Not peer to peer on systemd's private socket:
//! zbus 5 takes the sender systemd puts in its replies there for an
//! invalid unique name and its reader task panics. The manager's own cgroup
//! (`ControlGroup`: empty for the system manager, the manager's cgroup for
//! another instance) prefixes the unit paths, so ketch's cgroup paths are
//! the ones systemd gives its units.

use std::time::{Duration, Instant};

use zbus::Connection;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use crate::cgroups::Resources;

/// The system bus, where the system manager is `org.freedesktop.systemd1`.
pub const DEFAULT_BUS: &str = "unix:path=/run/dbus/system_bus_socket";

/// How long a started scope may take to become active.
const START_TIMEOUT: Duration = Duration::from_secs(5);

const DESTINATION: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("cannot reach systemd on {address}: {source}")]
    Connect {
        address: String,
        source: Box<zbus::Error>,
    },
    #[error("systemd {method} {unit}: {source}")]
    Call {
        method: &'static str,
        unit: String,
        source: Box<zbus::Error>,
    },
    #[error("systemd unit {unit} is {state} {waited:?} after its start, not active")]
    NotActive {
        unit: String,
        state: String,
        waited: Duration,
    },
}

type Result<T> = std::result::Result<T, SystemdError>;

/// A connection to a systemd manager.
#[derive(Clone, Debug)]
pub struct Systemd {
    conn: Connection,
    root: String,
}

/// A unit property: its name and value, as `a(sv)` carries it.
pub type Property = (&'static str, Value<'static>);

impl Systemd {
    /// Connects to the manager at `address` (a D-Bus address) and reads
    /// the cgroup its units live under.
    pub async fn connect(address: &str) -> Result<Self> {
        let connect_err = |source| SystemdError::Connect {
            address: address.to_owned(),
            source: Box::new(source),
        };
        let conn = zbus::connection::Builder::address(address)
            .map_err(connect_err)?
            .build()
            .await
            .map_err(connect_err)?;
        let mut systemd = Self {
            conn,
            root: String::new(),
        };
        let root: String = systemd
            .property(MANAGER_PATH, MANAGER, "ControlGroup")
            .await
            .map_err(|source| SystemdError::Call {
                method: "Get ControlGroup",
                unit: "manager".into(),
                source: Box::new(source),
            })?;
        systemd.root = root.trim_end_matches('/').to_owned();
        Ok(systemd)
    }

    /// The cgroup the manager's units live under, `""` for the system
    /// manager; ketch prefixes its systemd cgroup paths with it.
    pub fn cgroup_root(&self) -> &str {
        &self.root
    }

    async fn property<T>(&self, path: &str, iface: &str, name: &str) -> zbus::Result<T>
    where
        T: TryFrom<OwnedValue>,
        T::Error: Into<zbus::Error>,
    {
        let reply = self
            .conn
            .call_method(
                Some(DESTINATION),
                path,
                Some(PROPERTIES),
                "Get",
                &(iface, name),
            )
            .await?;
        let value: OwnedValue = reply.body().deserialize()?;
        T::try_from(value).map_err(Into::into)
    }

    /// Starts `scope` in `slice` holding `pid`, delegated, with `limits`,
    /// and waits until it is active.
    pub async fn start_scope(
        &self,
        scope: &str,
        slice: &str,
        pid: u32,
        limits: Vec<Property>,
    ) -> Result<()> {
        let call = |source| SystemdError::Call {
            method: "StartTransientUnit",
            unit: scope.to_owned(),
            source: Box::new(source),
        };
        let mut properties: Vec<Property> = vec![
            (
                "Description",
                Value::from(format!("ketch container {scope}")),
            ),
            ("Slice", Value::from(slice.to_owned())),
            ("Delegate", Value::from(true)),
            ("PIDs", Value::from(vec![pid])),
            // Stopped with its slice, nothing else: no implicit ordering
            // against shutdown targets that a container's scope must not get.
            ("DefaultDependencies", Value::from(false)),
        ];
        properties.extend(limits);
        let aux: Vec<(&str, Vec<Property>)> = Vec::new();
        self.conn
            .call_method(
                Some(DESTINATION),
                MANAGER_PATH,
                Some(MANAGER),
                "StartTransientUnit",
                &(scope, "replace", properties, aux),
            )
            .await
            .map_err(call)?;
        let started = Instant::now();
        loop {
            let state = self.active_state(scope).await.map_err(call)?;
            if state == "active" {
                return Ok(());
            }
            let waited = started.elapsed();
            if waited > START_TIMEOUT || state == "failed" {
                return Err(SystemdError::NotActive {
                    unit: scope.to_owned(),
                    state,
                    waited,
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn active_state(&self, unit: &str) -> zbus::Result<String> {
        let reply = self
            .conn
            .call_method(
                Some(DESTINATION),
                MANAGER_PATH,
                Some(MANAGER),
                "GetUnit",
                &(unit,),
            )
            .await?;
        let path: OwnedObjectPath = reply.body().deserialize()?;
        self.property(path.as_str(), UNIT, "ActiveState").await
    }

    /// Sets limit properties of a running unit (UpdateContainerResources).
    pub async fn set_limits(&self, unit: &str, limits: Vec<Property>) -> Result<()> {
        if limits.is_empty() {
            return Ok(());
        }
        self.conn
            .call_method(
                Some(DESTINATION),
                MANAGER_PATH,
                Some(MANAGER),
                "SetUnitProperties",
                &(unit, true, limits),
            )
            .await
            .map(drop)
            .map_err(|source| SystemdError::Call {
                method: "SetUnitProperties",
                unit: unit.to_owned(),
                source: Box::new(source),
            })
    }

    /// Stops `unit` and forgets a failed state; a unit systemd does not
    /// know (stopped when its last process left, or never started) is fine.
    pub async fn stop_unit(&self, unit: &str) -> Result<()> {
        let result = self
            .conn
            .call_method(
                Some(DESTINATION),
                MANAGER_PATH,
                Some(MANAGER),
                "StopUnit",
                &(unit, "replace"),
            )
            .await;
        match result {
            Ok(_) => {}
            Err(zbus::Error::MethodError(name, _, _)) if name.as_str() == NO_SUCH_UNIT => {}
            Err(source) => {
                return Err(SystemdError::Call {
                    method: "StopUnit",
                    unit: unit.to_owned(),
                    source: Box::new(source),
                });
            }
        }
        // Only a failed unit needs it; any other answer changes nothing.
        let _ = self
            .conn
            .call_method(
                Some(DESTINATION),
                MANAGER_PATH,
                Some(MANAGER),
                "ResetFailedUnit",
                &(unit,),
            )
            .await;
        Ok(())
    }
}

/// The limits of `resources` systemd has unit properties for, in the
/// names of the cgroup version in use (runc's systemd driver's mapping).
pub fn limit_properties(r: &Resources, v2: bool) -> Vec<Property> {
    let mut out: Vec<Property> = Vec::new();
    if let Some(limit) = r.memory_limit.filter(|l| *l > 0) {
        let name = if v2 { "MemoryMax" } else { "MemoryLimit" };
        out.push((name, Value::from(limit as u64)));
    }
    if let Some(shares) = r.cpu_shares.filter(|s| *s > 0) {
        if v2 {
            let weight = crate::cgroups::shares_to_weight(shares);
            out.push(("CPUWeight", Value::from(weight)));
        } else {
            out.push(("CPUShares", Value::from(shares)));
        }
    }
    if let (Some(quota), period) = (r.cpu_quota.filter(|q| *q > 0), r.cpu_period) {
        let period = period.filter(|p| *p > 0).unwrap_or(100_000);
        // systemd keeps the quota per second at 10 ms granularity: round
        // up, never below what was asked (as runc does).
        let mut per_sec = (quota as u64).saturating_mul(1_000_000) / period;
        if !per_sec.is_multiple_of(10_000) {
            per_sec = (per_sec / 10_000 + 1) * 10_000;
        }
        out.push(("CPUQuotaPerSecUSec", Value::from(per_sec)));
        out.push(("CPUQuotaPeriodUSec", Value::from(period)));
    }
    if let Some(tasks) = r.pids_limit.filter(|n| *n > 0) {
        out.push(("TasksMax", Value::from(tasks as u64)));
    }
    out
}

/// A container's scope unit name.
pub fn scope_name(container_id: &str) -> String {
    format!("ketch-{container_id}.scope")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(props: &[Property]) -> Vec<&'static str> {
        props.iter().map(|(n, _)| *n).collect()
    }

    #[test]
    fn limits_map_to_the_version_s_properties() {
        let r = Resources {
            memory_limit: Some(64 << 20),
            cpu_shares: Some(512),
            cpu_quota: Some(25_000),
            cpu_period: Some(100_000),
            pids_limit: Some(100),
            ..Default::default()
        };
        assert_eq!(
            names(&limit_properties(&r, true)),
            vec![
                "MemoryMax",
                "CPUWeight",
                "CPUQuotaPerSecUSec",
                "CPUQuotaPeriodUSec",
                "TasksMax"
            ]
        );
        let v1 = limit_properties(&r, false);
        assert_eq!(names(&v1)[..2], ["MemoryLimit", "CPUShares"]);
        assert_eq!(v1[0].1, Value::from((64u64) << 20));
        // 25 ms per 100 ms is 250 ms per second.
        assert_eq!(v1[2].1, Value::from(250_000u64));
        assert!(limit_properties(&Resources::default(), true).is_empty());
    }

    #[test]
    fn a_quota_rounds_up_to_systemd_s_granularity() {
        let r = Resources {
            cpu_quota: Some(1_234),
            cpu_period: Some(100_000),
            ..Default::default()
        };
        // 12.34 ms per second becomes 20 ms.
        assert_eq!(limit_properties(&r, true)[0].1, Value::from(20_000u64));
    }

    #[test]
    fn scope_names() {
        assert_eq!(scope_name("abc"), "ketch-abc.scope");
    }
}
