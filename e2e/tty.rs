//! Terminals that are real inside the container: exec and attach with a
//! tty driven from a real pty on the client side ([`ClientTerminal`], as
//! `crictl exec -it` runs), and TTY containers. The pty is the container's
//! own (its devpts, its `/dev/pts/N`), its size follows the client's
//! terminal, and it is the controlling terminal, so `tty`, `ps`, job
//! control and Ctrl-C behave as on a login.

use ketch::cri::api::*;

use crate::harness::cri::container_config;
use crate::harness::env::Env;
use crate::harness::stream_client::{ClientTerminal, exit_code};

impl Env {
    /// A busybox container that sleeps, to exec into.
    async fn tty_sleeper(&mut self, pod: &(String, PodSandboxConfig)) -> String {
        let config = container_config("sleeper", &self.busybox(), &["sleep", "3600"]);
        self.run_container(pod, config).await
    }

    /// The URL of an exec with a terminal and stdin.
    async fn exec_tty_url(&mut self, id: &str, cmd: &[&str]) -> String {
        self.rt
            .exec(ExecRequest {
                container_id: id.to_owned(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                tty: true,
                stdin: true,
                stdout: true,
                stderr: false,
            })
            .await
            .expect("exec URL")
            .into_inner()
            .url
    }
}

/// `/dev/pts/N` in `text`: the N.
fn pts_number(text: &str) -> u32 {
    let at = text.find("/dev/pts/").expect("a /dev/pts/N") + "/dev/pts/".len();
    text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("a pty number")
}

#[tokio::test]
async fn exec_tty_names_a_terminal_that_exists_in_the_container() {
    let mut env = Env::start().await;
    let pod = env.run_pod("tty-name").await;
    let id = env.tty_sleeper(&pod).await;
    // The terminal by name is the very device of stdin (not merely some
    // node of that name), it is in the container's devpts, and the
    // process's session has it as controlling terminal (/dev/tty opens).
    let script = "t=$(tty); echo \"name=$t\"; test -c \"$t\" && echo exists; \
                  test $(stat -L -c %t:%T \"$t\") = $(stat -L -c %t:%T /proc/self/fd/0) && echo same-device; \
                  grep -q \" /dev/pts devpts \" /proc/mounts && echo own-devpts; \
                  echo ctty > /dev/tty && echo done";
    let url = env.exec_tty_url(&id, &["sh", "-c", script]).await;
    let mut term = ClientTerminal::open(&url, 80, 24).await;
    let screen = term.wait_for("done", 10).await;
    assert!(screen.contains("name=/dev/pts/"), "{screen:?}");
    for word in ["exists", "same-device", "own-devpts", "ctty"] {
        assert!(screen.contains(word), "{word}: {screen:?}");
    }
    assert_eq!(exit_code(&term.status().await), 0);

    // The container's devpts is its own: its first exec gets a low number
    // and its ptmx gave nothing on the host's side.
    let url = env
        .exec_tty_url(&id, &["sh", "-c", "tty; ls /dev/pts"])
        .await;
    let mut term = ClientTerminal::open(&url, 80, 24).await;
    let screen = term.wait_for("ptmx", 10).await;
    let n = pts_number(&screen);
    assert!(n < 8, "{screen:?}");
    assert_eq!(exit_code(&term.status().await), 0);
    env.remove_pod(&pod.0).await;
}

#[tokio::test]
async fn exec_tty_size_follows_the_client_terminal() {
    let mut env = Env::start().await;
    let pod = env.run_pod("tty-size").await;
    let id = env.tty_sleeper(&pod).await;
    // `stty size` first thing: the size the client sent first is there
    // before the program starts.
    let url = env
        .exec_tty_url(&id, &["sh", "-c", "stty size; read l; stty size; echo end"])
        .await;
    let mut term = ClientTerminal::open(&url, 132, 43).await;
    term.wait_for("43 132", 10).await;
    term.resize(90, 25);
    // The window change goes its own way: give it a moment, then Enter.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    term.type_keys(b"\r").await;
    let screen = term.wait_for("end", 10).await;
    assert!(screen.contains("25 90"), "{screen:?}");
    assert_eq!(exit_code(&term.status().await), 0);
    env.remove_pod(&pod.0).await;
}

#[tokio::test]
async fn ps_inside_shows_the_terminal() {
    let mut env = Env::start().await;
    let pod = env.run_pod("tty-ps").await;
    let id = env.tty_sleeper(&pod).await;
    let url = env
        .exec_tty_url(&id, &["sh", "-c", "tty; ps -o pid,tty,comm; echo end"])
        .await;
    let mut term = ClientTerminal::open(&url, 80, 24).await;
    let screen = term.wait_for("end", 10).await;
    let n = pts_number(&screen);
    let ps_line = screen
        .lines()
        .find(|l| l.trim_end().ends_with(" ps"))
        .unwrap_or_else(|| panic!("no ps line: {screen:?}"));
    // busybox's ps names a terminal by its numbers: devpts is major 136.
    assert!(
        ps_line.contains(&format!("pts/{n}")) || ps_line.contains(&format!(" 136,{n} ")),
        "{screen:?}"
    );
    // The sleeper has no terminal.
    let sleep_line = screen
        .lines()
        .find(|l| l.trim_end().ends_with(" sleep"))
        .unwrap_or_else(|| panic!("no sleep line: {screen:?}"));
    assert!(sleep_line.contains(" ? "), "{screen:?}");
    assert_eq!(exit_code(&term.status().await), 0);
    env.remove_pod(&pod.0).await;
}

#[tokio::test]
async fn ctrl_c_in_an_interactive_shell_reaches_the_foreground_job() {
    let mut env = Env::start().await;
    let pod = env.run_pod("tty-intr").await;
    let id = env.tty_sleeper(&pod).await;
    // What `kubectl exec -it POD -- sh` runs.
    let url = env.exec_tty_url(&id, &["sh"]).await;
    let mut term = ClientTerminal::open(&url, 80, 24).await;
    term.type_keys(b"echo st''arted\r").await;
    term.wait_for("started", 10).await;
    term.type_keys(b"sleep 1000\r").await;
    // Let the sleep become the foreground job.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    term.type_keys(b"\x03").await;
    // The sleep died of SIGINT (130) and the shell, back at its prompt,
    // lives on and takes input. (A shell that got the SIGINT in the job's
    // place would still be waiting for the sleep.)
    term.type_keys(b"echo code=$?\r").await;
    term.wait_for("code=130", 10).await;
    term.type_keys(b"echo al''ive\r").await;
    term.wait_for("alive", 10).await;
    // The shell had its terminal: job control on.
    assert!(
        !term.screen.contains("job control turned off"),
        "{:?}",
        term.screen
    );
    term.type_keys(b"exit 3\r").await;
    assert_eq!(exit_code(&term.status().await), 3);
    env.remove_pod(&pod.0).await;
}

#[tokio::test]
async fn a_tty_container_logs_its_terminal_and_attach_drives_it() {
    let mut env = Env::start().await;
    let pod = env.run_pod("tty-ctr").await;

    // `tty` in a TTY container: the first pty of its own devpts, logged as
    // a stdout line.
    let mut config = container_config("tty", &env.busybox(), &["tty"]);
    config.tty = true;
    let id = env.run_container(&pod, config).await;
    let status = env.wait_exited(&id).await;
    assert_eq!(status.exit_code, 0, "{status:?}");
    let log = std::fs::read_to_string(&status.log_path).expect("the container's log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1, "{log:?}");
    assert!(lines[0].ends_with(" stdout F /dev/pts/0"), "{log:?}");

    // An interactive TTY container, attached from a terminal and resized.
    let mut config = container_config("shell", &env.busybox(), &["sh"]);
    config.tty = true;
    config.stdin = true;
    let id = env.run_container(&pod, config).await;
    let url = env
        .rt
        .attach(AttachRequest {
            container_id: id.clone(),
            stdin: true,
            tty: true,
            stdout: true,
            stderr: false,
        })
        .await
        .expect("attach URL")
        .into_inner()
        .url;
    let mut term = ClientTerminal::open(&url, 100, 30).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    term.type_keys(b"tty; stty size; echo e''nd\r").await;
    let screen = term.wait_for("end", 10).await;
    assert!(screen.contains("/dev/pts/0"), "{screen:?}");
    assert!(screen.contains("30 100"), "{screen:?}");
    term.resize(120, 40);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    term.type_keys(b"stty size; echo e''nd\r").await;
    let screen = term.wait_for("end", 10).await;
    assert!(screen.contains("40 120"), "{screen:?}");
    // The shell exits: the attach ends with it.
    term.type_keys(b"exit 4\r").await;
    let _ = term.status().await;
    let status = env.wait_exited(&id).await;
    assert_eq!(status.exit_code, 4, "{status:?}");
    env.remove_pod(&pod.0).await;
}
