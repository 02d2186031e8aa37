//! Seccomp and AppArmor end to end: `RuntimeDefault`, `Unconfined` and
//! `Localhost` profiles seen from inside the container (its first process
//! and an exec), the pod's profile as the default, privileged containers
//! unconfined, and each refusal with its code and message.

use ketch::cri::api::*;
use tonic::Code;

use crate::harness::cri::container_config;
use crate::harness::env::Env;

fn profile(kind: security_profile::ProfileType, reference: &str) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: reference.to_owned(),
    })
}

fn security(config: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The `Seccomp:` mode line of /proc/self/status and the result of
/// `unshare -U`, printed by the container.
const PROBE: &str = "grep '^Seccomp:' /proc/self/status; \
    if unshare -U true 2>/dev/null; then echo unshare allowed; else echo unshare denied; fi";

impl Env {
    async fn probe(&mut self, pod: &(String, PodSandboxConfig), config: ContainerConfig) -> String {
        let id = self.run_container(pod, config).await;
        let status = self.wait_exited(&id).await;
        assert_eq!(status.exit_code, 0, "{status:?}");
        std::fs::read_to_string(&status.log_path).unwrap_or_default()
    }
}

#[tokio::test]
async fn a_restricted_pod_runs_under_the_default_profile() {
    let mut env = Env::start().await;
    let mut pod_config =
        crate::harness::cri::pod_config(&crate::harness::cri::unique("restricted"), &env.log_dir());
    pod_config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .seccomp = profile(security_profile::ProfileType::RuntimeDefault, "");
    let pod = env.run_pod_with(pod_config).await;

    // Kubernetes' restricted level: non-root, no privilege escalation, no
    // capabilities, RuntimeDefault seccomp (here from the pod).
    let mut config = container_config("restricted", &env.busybox(), &["sh", "-c", PROBE]);
    let s = security(&mut config);
    s.run_as_user = Some(Int64Value { value: 1000 });
    s.no_new_privs = true;
    s.capabilities = Some(Capability {
        drop_capabilities: vec!["ALL".into()],
        ..Default::default()
    });
    let log = env.probe(&pod, config).await;
    assert!(log.contains("Seccomp:\t2"), "{log}");
    assert!(log.contains("unshare denied"), "{log}");

    // Without no_new_privs the filter goes in before the identity change.
    let mut config = container_config("root", &env.busybox(), &["sh", "-c", PROBE]);
    security(&mut config).run_as_user = Some(Int64Value { value: 0 });
    let log = env.probe(&pod, config).await;
    assert!(log.contains("Seccomp:\t2"), "{log}");
    assert!(log.contains("unshare denied"), "{log}");

    // An exec into a filtered container is filtered too.
    let mut config = container_config("sleeper", &env.busybox(), &["sleep", "600"]);
    security(&mut config).no_new_privs = true;
    let id = env.run_container(&pod, config).await;
    let out = env.exec(&id, &["sh", "-c", PROBE], 30).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Seccomp:\t2"), "{stdout}");
    assert!(stdout.contains("unshare denied"), "{stdout}");
    // The daemon compiled the filter into the bundle at create.
    let bundle = env.daemon.root_dir.join("containers").join(&id);
    let program = std::fs::metadata(bundle.join("seccomp.bpf")).unwrap();
    assert!(program.len() > 72, "{program:?}");

    // A torn program file is not loaded: the start compiles the profile.
    let mut config = container_config("torn", &env.busybox(), &["sh", "-c", PROBE]);
    security(&mut config).no_new_privs = true;
    let id = env.create(&pod, config).await.unwrap();
    let file = env
        .daemon
        .root_dir
        .join("containers")
        .join(&id)
        .join("seccomp.bpf");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    env.start_container(&id).await.unwrap();
    let status = env.wait_exited(&id).await;
    assert_eq!(status.exit_code, 0, "{status:?}");
    let log = std::fs::read_to_string(&status.log_path).unwrap_or_default();
    assert!(log.contains("Seccomp:\t2"), "{log}");
    assert!(log.contains("unshare denied"), "{log}");
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

#[tokio::test]
async fn unconfined_privileged_and_localhost_profiles() {
    let mut env = Env::start().await;
    // Privileged, so it may hold the privileged container below.
    let pod = env.run_privileged_pod("seccomp-kinds").await;

    // No profile anywhere: unconfined, as in containerd.
    let config = container_config("none", &env.busybox(), &["sh", "-c", PROBE]);
    let log = env.probe(&pod, config).await;
    assert!(log.contains("Seccomp:\t0"), "{log}");

    let mut config = container_config("unconfined", &env.busybox(), &["sh", "-c", PROBE]);
    security(&mut config).seccomp = profile(security_profile::ProfileType::Unconfined, "");
    let log = env.probe(&pod, config).await;
    assert!(log.contains("Seccomp:\t0"), "{log}");
    assert!(log.contains("unshare allowed"), "{log}");

    // Privileged means every syscall, whatever the profile says.
    let mut config = container_config("privileged", &env.busybox(), &["sh", "-c", PROBE]);
    let s = security(&mut config);
    s.privileged = true;
    s.seccomp = profile(security_profile::ProfileType::RuntimeDefault, "");
    let id = env.create(&pod, config).await.unwrap();
    env.start_container(&id).await.expect("start privileged");
    let status = env.wait_exited(&id).await;
    let log = std::fs::read_to_string(&status.log_path).unwrap_or_default();
    assert!(log.contains("Seccomp:\t0"), "{log}");

    // RuntimeDefault with CAP_SYS_ADMIN unlocks unshare.
    let mut config = container_config("admin", &env.busybox(), &["sh", "-c", PROBE]);
    let s = security(&mut config);
    s.seccomp = profile(security_profile::ProfileType::RuntimeDefault, "");
    s.capabilities = Some(Capability {
        add_capabilities: vec!["SYS_ADMIN".into()],
        ..Default::default()
    });
    let log = env.probe(&pod, config).await;
    assert!(log.contains("Seccomp:\t2"), "{log}");
    assert!(log.contains("unshare allowed"), "{log}");

    // A Localhost profile in Docker's format: mkdir fails, the rest runs.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-mkdir.json");
    std::fs::write(
        &path,
        r#"{"defaultAction":"SCMP_ACT_ALLOW",
            "syscalls":[{"name":"mkdir","action":"SCMP_ACT_ERRNO"},
                        {"names":["mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
    )
    .unwrap();
    let mut config = container_config(
        "localhost",
        &env.busybox(),
        &[
            "sh",
            "-c",
            "grep '^Seccomp:' /proc/self/status; mkdir /tmp/x || echo mkdir failed",
        ],
    );
    security(&mut config).seccomp = profile(
        security_profile::ProfileType::Localhost,
        &path.to_string_lossy(),
    );
    let id = env.run_container(&pod, config).await;
    let status = env.wait_exited(&id).await;
    let log = std::fs::read_to_string(&status.log_path).unwrap_or_default();
    assert!(log.contains("Seccomp:\t2"), "{log}");
    assert!(log.contains("mkdir failed"), "{log}");
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

#[tokio::test]
async fn bad_profiles_are_refused_at_create() {
    let mut env = Env::start().await;
    let pod = env.run_pod("seccomp-bad").await;
    let dir = tempfile::tempdir().unwrap();
    let malformed = dir.path().join("malformed.json");
    std::fs::write(&malformed, "{\"defaultAction\": ").unwrap();
    let wrong = dir.path().join("wrong.json");
    std::fs::write(&wrong, r#"{"defaultAction":"SCMP_ACT_MAYBE"}"#).unwrap();
    let missing = dir.path().join("missing.json");

    let cases: Vec<(
        Option<SecurityProfile>,
        Option<SecurityProfile>,
        Vec<String>,
    )> = vec![
        (
            profile(
                security_profile::ProfileType::Localhost,
                &missing.to_string_lossy(),
            ),
            None,
            vec![missing.display().to_string(), "No such file".into()],
        ),
        (
            profile(
                security_profile::ProfileType::Localhost,
                &malformed.to_string_lossy(),
            ),
            None,
            vec![malformed.display().to_string(), "invalid JSON".into()],
        ),
        (
            profile(
                security_profile::ProfileType::Localhost,
                &wrong.to_string_lossy(),
            ),
            None,
            vec![
                wrong.display().to_string(),
                "unknown action \"SCMP_ACT_MAYBE\"".into(),
            ],
        ),
        (
            profile(
                security_profile::ProfileType::Localhost,
                "profiles/relative.json",
            ),
            None,
            vec!["profiles/relative.json".into(), "must be absolute".into()],
        ),
        (
            profile(security_profile::ProfileType::Localhost, ""),
            None,
            vec!["localhost_ref".into()],
        ),
        (
            None,
            profile(
                security_profile::ProfileType::Localhost,
                "ketch-test-profile",
            ),
            vec![
                "ketch-test-profile".into(),
                "AppArmor is not enabled".into(),
            ],
        ),
    ];
    for (i, (seccomp, apparmor, words)) in cases.into_iter().enumerate() {
        let mut config = container_config(&format!("bad{i}"), &env.busybox(), &["true"]);
        let s = security(&mut config);
        s.seccomp = seccomp;
        s.apparmor = apparmor;
        let err = env.create(&pod, config).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "case {i}: {err:?}");
        for word in words {
            assert!(
                err.message().contains(&word),
                "case {i}: {word:?} in {err:?}"
            );
        }
    }
    // Nothing half-made: no container, and the names are free again.
    let list = env
        .rt
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.containers.is_empty(), "{list:?}");
    let mut config = container_config("bad0", &env.busybox(), &["true"]);
    let s = security(&mut config);
    s.seccomp = profile(security_profile::ProfileType::RuntimeDefault, "");
    s.apparmor = profile(security_profile::ProfileType::RuntimeDefault, "");
    env.create(&pod, config).await.unwrap();
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}
