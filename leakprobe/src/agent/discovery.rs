//! Which processes on the node are Python services: by name first (cheap, from the kernel's
//! exec events or a /proc scan), then proven by finding a CPython runtime in the process.

use std::fs;

/// Command names (`comm`, at most 15 bytes) of Python processes: the interpreter itself, and
/// the servers and workers people start through a console script (whose `comm` is the script's
/// name). Forked workers keep their parent's name, and are followed through fork events anyway.
const SERVER_NAMES: &[&str] =
    &["uvicorn", "gunicorn", "hypercorn", "daphne", "celery", "granian", "dramatiq", "rq", "huey", "flask", "fastapi"];

/// Whether a process with this `comm` (and, when known, executable and first argument) may be a
/// Python process worth inspecting.
pub fn is_candidate(comm: &str, exe: Option<&str>, argv0: Option<&str>) -> bool {
    let base = |path: &str| path.rsplit('/').next().unwrap_or(path).to_string();
    let pythonish = |name: &str| name.starts_with("python") || name.starts_with("pypy");
    pythonish(comm)
        || SERVER_NAMES.iter().any(|s| comm == *s || comm.starts_with(&format!("{s}:")))
        || comm.starts_with("gunicorn")
        || exe.is_some_and(|e| pythonish(&base(e)))
        || argv0.is_some_and(|a| pythonish(&base(a)) || SERVER_NAMES.contains(&base(a).as_str()))
}

/// `comm` as the kernel sends it: NUL-padded bytes.
pub fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// Whether /proc/PID is a process that looks like Python (by name, executable or argv[0]).
pub fn looks_like_python(pid: u32) -> bool {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| p.display().to_string());
    let argv0 = fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|b| b.split(|&c| c == 0).next().map(|a| String::from_utf8_lossy(a).into_owned()));
    is_candidate(comm.trim_end(), exe.as_deref(), argv0.as_deref())
}

/// Whether `pid` is a whole process (not a thread of another one).
pub fn is_process(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Tgid:").map(|v| v.trim().parse::<u32>().ok())))
        .flatten()
        .is_some_and(|tgid| tgid == pid)
}

/// Every process on the node that looks like Python, except `own` (the agent itself).
pub fn scan(own: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid| pid != own && looks_like_python(pid))
        .collect();
    pids.sort_unstable();
    pids
}

/// The command label: the server's name when a console script runs it, else the interpreter's,
/// with the script or module (`python -m app`, `python app.py`) when that is what runs.
pub fn command_label(pid: u32) -> String {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim_end().to_string();
    let argv: Vec<String> = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
        })
        .unwrap_or_default();
    label_from(&comm, &argv)
}

pub fn label_from(comm: &str, argv: &[String]) -> String {
    let base = |path: &str| path.rsplit('/').next().unwrap_or(path).to_string();
    let Some(first) = argv.first() else { return comm.to_string() };
    let interpreter = base(first);
    if !interpreter.starts_with("python") {
        return interpreter;
    }
    // python [-X ...] -m module | python script.py | python -c ...
    let mut args = argv[1..].iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-m" => return args.next().map_or(interpreter.clone(), |m| format!("python -m {m}")),
            "-c" => return format!("{interpreter} -c"),
            "-X" | "-W" => {
                args.next();
            }
            a if a.starts_with('-') => {}
            script => {
                let script = base(script);
                // A console script run by the interpreter: `python /venv/bin/uvicorn app:app`.
                return if script.ends_with(".py") { format!("python {script}") } else { script };
            }
        }
    }
    interpreter
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn candidates_by_name_executable_and_argv0() {
        assert!(is_candidate("python3.11", None, None));
        assert!(is_candidate("uvicorn", None, None));
        assert!(is_candidate("gunicorn: worker", None, None));
        assert!(is_candidate("celery", None, None));
        assert!(is_candidate("myapp", Some("/usr/local/bin/python3.12"), None));
        assert!(is_candidate("myapp", None, Some("/srv/venv/bin/python")));
        assert!(!is_candidate("bash", Some("/usr/bin/bash"), Some("bash")));
        assert!(!is_candidate("nginx", None, None));
        assert!(!is_candidate("rqlite", None, None));
    }

    #[test]
    fn comm_stops_at_the_first_nul() {
        let mut comm = [0u8; 16];
        comm[..7].copy_from_slice(b"uvicorn");
        assert_eq!(comm_str(&comm), "uvicorn");
    }

    #[test]
    fn command_labels_name_what_runs() {
        assert_eq!(label_from("uvicorn", &argv("/srv/venv/bin/python3 /srv/venv/bin/uvicorn app:app")), "uvicorn");
        assert_eq!(label_from("python3", &argv("python3 -m http.server")), "python -m http.server");
        assert_eq!(label_from("python3", &argv("/usr/bin/python3 -X dev /srv/app/main.py")), "python main.py");
        assert_eq!(label_from("python3", &argv("python3 -c print(1)")), "python3 -c");
        assert_eq!(label_from("gunicorn", &argv("/venv/bin/gunicorn -w 4 app:app")), "gunicorn");
        assert_eq!(label_from("python3", &[]), "python3");
        assert_eq!(label_from("python3", &argv("python3")), "python3");
    }
}
