//! From a holder (`module.name`, `module.Class.attr`, `module.obj.attr['key']`) to the lines of
//! its module that add to it: the file is found among the files the recording's Python frames
//! are in, and its source searched for inserts into the holder's last name (`append`, `add`,
//! `setdefault`, `[k] = v`, `+=`, ...). Pure text work; the caller reads the sources.

use regex::Regex;

/// The holder's module file, among `files` (every Python file seen in the recording's stacks).
/// `main_script` is the file `__main__` runs. Module names have dots too (`uvicorn.main.params`),
/// so the longest dotted prefix that names a file wins.
pub fn module_file<'a>(holder: &str, files: &'a [String], main_script: Option<&'a str>) -> Option<&'a str> {
    let path = holder.split('[').next().unwrap_or(holder);
    let parts: Vec<&str> = path.split('.').collect();
    for len in (1..parts.len()).rev() {
        let module = &parts[..len];
        if module == ["__main__"] {
            return main_script;
        }
        let as_path = module.join("/");
        let found = files.iter().find(|f| {
            let f = f.as_str();
            f.ends_with(&format!("/{as_path}.py"))
                || f.ends_with(&format!("/{as_path}/__init__.py"))
                || f == format!("{as_path}.py")
        });
        if let Some(f) = found {
            return Some(f.as_str());
        }
    }
    None
}

/// The names code may use for the holder, most likely first: its last attribute (without
/// subscripts) or a default argument's parameter (`module.lookup(_cache=)`), then its last
/// subscript's key when that is a name (`app.state._state['cache']` is `app.state.cache` in the
/// code).
pub fn holder_names(holder: &str) -> Vec<&str> {
    let is_name = |n: &&str| !n.is_empty() && n.chars().all(|c| c.is_alphanumeric() || c == '_');
    let path = holder.split('[').next().unwrap_or(holder);
    let last = match path.strip_suffix("=)").and_then(|p| p.rsplit_once('(')) {
        Some((_, param)) => Some(param),
        None => path.rsplit('.').next(),
    };
    let key = holder.strip_suffix("']").and_then(|h| h.rsplit_once("['")).map(|(_, key)| key);
    let mut names: Vec<&str> = last.into_iter().chain(key).filter(is_name).collect();
    names.dedup();
    names
}

/// The first line (1-based) of `source` that adds to `name`, and its code (trimmed).
pub fn inserting_line(source: &str, name: &str) -> Option<(u32, String)> {
    let name = regex::escape(name);
    const INSERTS: &str = "append|appendleft|extend|extendleft|add|update|setdefault|insert|put|put_nowait";
    let insert = Regex::new(&format!(
        r"(^|[^\w.])(self\.|cls\.|\w+\.)?{name}\s*(\.\s*({INSERTS})\s*\(|\[[^\]\n]*\]\s*(=[^=]|\.\s*({INSERTS})\s*\()|\+=|\|=)"
    ))
    .ok()?;
    // Lines inside a triple-quoted string (a docstring that shows the call) are not code.
    let mut in_string = false;
    source
        .lines()
        .enumerate()
        .find(|(_, line)| {
            let quotes = line.matches("\"\"\"").count() + line.matches("'''").count();
            let was_in_string = in_string;
            in_string ^= quotes % 2 == 1;
            if was_in_string || quotes > 0 {
                return false;
            }
            let code = line.split('#').next().unwrap_or("");
            insert.is_match(code)
        })
        .map(|(i, line)| (i as u32 + 1, line.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_is_the_longest_prefix_that_names_a_file() {
        let files = vec![
            "/srv/app/main.py".to_string(),
            "/venv/lib/python3.11/site-packages/uvicorn/main.py".to_string(),
            "/srv/app/broker/__init__.py".to_string(),
        ];
        assert_eq!(module_file("__main__._RECENT", &files, Some("/srv/app/main.py")), Some("/srv/app/main.py"));
        assert_eq!(module_file("uvicorn.main.params", &files, None), Some(files[1].as_str()));
        assert_eq!(module_file("broker.Hub.subs['x']", &files, None), Some(files[2].as_str()));
        assert_eq!(module_file("elsewhere.cache", &files, None), None);
    }

    #[test]
    fn inserts_are_found_and_reads_are_not() {
        let source = "VIEWS = []\n\ndef count():\n    return len(VIEWS)  # VIEWS.append( in a comment\n\ndef view(x):\n    VIEWS.append({'x': x})\n";
        assert_eq!(inserting_line(source, "VIEWS"), Some((7, "VIEWS.append({'x': x})".to_string())));
        let source = "class Hub:\n    subs = {}\n    def on(self, k, f):\n        if self.subs[k] == f:\n            pass\n        self.subs[k] = f\n";
        assert_eq!(inserting_line(source, "subs").map(|l| l.0), Some(6));
        assert_eq!(inserting_line("OTHER_VIEWS.append(1)\n", "VIEWS"), None);
        assert_eq!(inserting_line("seen |= {1}\n", "seen").map(|l| l.0), Some(1));
        let documented = "\"\"\"Keeps views.\n\n- `VIEWS.append(x)` forever.\n\"\"\"\nVIEWS = []\nVIEWS.append(1)\n";
        assert_eq!(inserting_line(documented, "VIEWS").map(|l| l.0), Some(6));
        assert_eq!(inserting_line("x = EVENTS[u]\nEVENTS[u].append(1)\n", "EVENTS").map(|l| l.0), Some(2));
        assert_eq!(holder_names("app.Hub.subs['updates']"), ["subs", "updates"]);
        assert_eq!(holder_names("app.x\"; rm"), Vec::<&str>::new());
        assert_eq!(holder_names("app.lookup(_cache=)"), ["_cache"]);
        assert_eq!(holder_names("app.lookup(_cache=)['k']"), ["_cache", "k"]);
        assert_eq!(holder_names("app.make.<locals>.seen"), ["seen"]);
        assert_eq!(holder_names("__main__.app.state._state['cache']"), ["_state", "cache"]);
        assert_eq!(holder_names("app.routes[3]"), ["routes"]);
    }
}
