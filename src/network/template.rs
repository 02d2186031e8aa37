//! The CNI config template rendered when kubelet hands the node's pod CIDR
//! over through `UpdateRuntimeConfig`, as containerd's `conf_template`
//! does, with the same variables:
//!
//! - `{{.PodCIDR}}`: the first CIDR;
//! - `.PodCIDRRanges`: every CIDR (dual stack), used with `range`;
//! - `.Routes`: `0.0.0.0/0` and/or `::/0`, one per family present.
//!
//! containerd renders Go `text/template`; ketch implements the subset its
//! templates use (variables, `range $i, $x := .List`, `if`/`else`/`end`,
//! the `{{-`/`-}}` whitespace trims, comments), so a template written for
//! containerd renders the same here. Anything else is an error naming it.
//! Hand-written: a Go-template engine for three variables is not worth a
//! dependency.

use ipnet::IpNet;

/// The values a template may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateVars {
    pub pod_cidr: String,
    pub pod_cidr_ranges: Vec<String>,
    pub routes: Vec<String>,
}

impl TemplateVars {
    /// The variables for `cidrs` (at least one).
    pub fn new(cidrs: &[IpNet]) -> Self {
        let mut routes = Vec::new();
        if cidrs.iter().any(|c| c.addr().is_ipv4()) {
            routes.push("0.0.0.0/0".to_owned());
        }
        if cidrs.iter().any(|c| c.addr().is_ipv6()) {
            routes.push("::/0".to_owned());
        }
        let ranges: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
        Self {
            pod_cidr: ranges.first().cloned().unwrap_or_default(),
            pod_cidr_ranges: ranges,
            routes,
        }
    }
}

#[derive(Debug)]
enum Node {
    Text(String),
    /// `{{.Field}}` or `{{$var}}`.
    Print(String),
    Range {
        index: Option<String>,
        elem: Option<String>,
        list: String,
        body: Vec<Node>,
    },
    If {
        cond: String,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

#[derive(Debug, Clone)]
enum Val {
    Str(String),
    Int(usize),
    List(Vec<String>),
}

impl Val {
    fn truthy(&self) -> bool {
        match self {
            Val::Str(s) => !s.is_empty(),
            Val::Int(i) => *i != 0,
            Val::List(l) => !l.is_empty(),
        }
    }
}

/// Renders `template` with `vars`.
pub fn render(template: &str, vars: &TemplateVars) -> Result<String, String> {
    let tokens = tokenize(template)?;
    let mut iter = tokens.into_iter();
    let (nodes, end) = parse(&mut iter)?;
    if let Some(end) = end {
        return Err(format!("unexpected {{{{{end}}}}}"));
    }
    let mut out = String::with_capacity(template.len());
    let mut scope: Vec<(String, Val)> = Vec::new();
    eval(&nodes, vars, &mut scope, &mut out)?;
    Ok(out)
}

enum Token {
    Text(String),
    Action(String),
}

fn tokenize(template: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut rest = template;
    let mut trim_next = false;
    while let Some(open) = rest.find("{{") {
        let mut text = &rest[..open];
        if trim_next {
            text = text.trim_start();
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| "unclosed {{".to_owned())?;
        let mut action = &after[..close];
        if let Some(a) = action.strip_prefix("- ") {
            text = text.trim_end();
            action = a;
        }
        trim_next = false;
        if let Some(a) = action.strip_suffix(" -") {
            trim_next = true;
            action = a;
        }
        tokens.push(Token::Text(text.to_owned()));
        tokens.push(Token::Action(action.trim().to_owned()));
        rest = &after[close + 2..];
    }
    let text = if trim_next { rest.trim_start() } else { rest };
    tokens.push(Token::Text(text.to_owned()));
    Ok(tokens)
}

/// Parses until `end`/`else` (returned) or the end of input (`None`).
fn parse(tokens: &mut impl Iterator<Item = Token>) -> Result<(Vec<Node>, Option<String>), String> {
    let mut nodes = Vec::new();
    while let Some(token) = tokens.next() {
        let action = match token {
            Token::Text(text) => {
                if !text.is_empty() {
                    nodes.push(Node::Text(text));
                }
                continue;
            }
            Token::Action(action) => action,
        };
        if action.starts_with("/*") && action.ends_with("*/") {
            continue;
        }
        if action == "end" || action == "else" {
            return Ok((nodes, Some(action)));
        }
        if let Some(spec) = action.strip_prefix("range ") {
            let (index, elem, list) = parse_range(spec.trim())?;
            let (body, end) = parse(tokens)?;
            if end.as_deref() != Some("end") {
                return Err(format!("{{{{range {spec}}}}} has no {{{{end}}}}"));
            }
            nodes.push(Node::Range {
                index,
                elem,
                list,
                body,
            });
        } else if let Some(cond) = action.strip_prefix("if ") {
            let cond = cond.trim().to_owned();
            check_operand(&cond)?;
            let (then, end) = parse(tokens)?;
            let otherwise = match end.as_deref() {
                Some("end") => Vec::new(),
                Some("else") => match parse(tokens)? {
                    (otherwise, Some(e)) if e == "end" => otherwise,
                    _ => return Err(format!("{{{{if {cond}}}}} has no {{{{end}}}}")),
                },
                _ => return Err(format!("{{{{if {cond}}}}} has no {{{{end}}}}")),
            };
            nodes.push(Node::If {
                cond,
                then,
                otherwise,
            });
        } else {
            check_operand(&action)?;
            nodes.push(Node::Print(action));
        }
    }
    Ok((nodes, None))
}

/// `$i, $x := .List`, `$x := .List` or `.List`.
fn parse_range(spec: &str) -> Result<(Option<String>, Option<String>, String), String> {
    let (vars, list) = match spec.split_once(":=") {
        Some((vars, list)) => (Some(vars.trim()), list.trim()),
        None => (None, spec),
    };
    check_operand(list)?;
    let (index, elem) = match vars {
        None => (None, None),
        Some(vars) => {
            let names: Vec<&str> = vars.split(',').map(str::trim).collect();
            for n in &names {
                if !is_var(n) {
                    return Err(format!("unsupported range variable {n:?}"));
                }
            }
            match names.as_slice() {
                [e] => (None, Some((*e).to_owned())),
                [i, e] => (Some((*i).to_owned()), Some((*e).to_owned())),
                _ => return Err(format!("unsupported range {spec:?}")),
            }
        }
    };
    Ok((index, elem, list.to_owned()))
}

fn is_var(s: &str) -> bool {
    s.len() > 1
        && s.starts_with('$')
        && s[1..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_operand(s: &str) -> Result<(), String> {
    match s {
        ".PodCIDR" | ".PodCIDRRanges" | ".Routes" | "." => Ok(()),
        v if is_var(v) => Ok(()),
        other => Err(format!("unsupported template action {{{{{other}}}}}")),
    }
}

fn lookup(name: &str, vars: &TemplateVars, scope: &[(String, Val)]) -> Result<Val, String> {
    match name {
        ".PodCIDR" => Ok(Val::Str(vars.pod_cidr.clone())),
        ".PodCIDRRanges" => Ok(Val::List(vars.pod_cidr_ranges.clone())),
        ".Routes" => Ok(Val::List(vars.routes.clone())),
        _ => scope
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("undefined {name}")),
    }
}

fn eval(
    nodes: &[Node],
    vars: &TemplateVars,
    scope: &mut Vec<(String, Val)>,
    out: &mut String,
) -> Result<(), String> {
    for node in nodes {
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Print(name) => match lookup(name, vars, scope)? {
                Val::Str(s) => out.push_str(&s),
                Val::Int(i) => out.push_str(&i.to_string()),
                Val::List(_) => {
                    return Err(format!("{name} is a list: use it with range"));
                }
            },
            Node::If {
                cond,
                then,
                otherwise,
            } => {
                let branch = if lookup(cond, vars, scope)?.truthy() {
                    then
                } else {
                    otherwise
                };
                eval(branch, vars, scope, out)?;
            }
            Node::Range {
                index,
                elem,
                list,
                body,
            } => {
                let Val::List(items) = lookup(list, vars, scope)? else {
                    return Err(format!("cannot range over {list}"));
                };
                for (i, item) in items.into_iter().enumerate() {
                    let depth = scope.len();
                    if let Some(index) = index {
                        scope.push((index.clone(), Val::Int(i)));
                    }
                    if let Some(elem) = elem {
                        scope.push((elem.clone(), Val::Str(item.clone())));
                    }
                    // `.` is the element inside a range, as in Go.
                    scope.push((".".to_owned(), Val::Str(item)));
                    let result = eval(body, vars, scope, out);
                    scope.truncate(depth);
                    result?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(cidrs: &[&str]) -> TemplateVars {
        let nets: Vec<IpNet> = cidrs.iter().map(|c| c.parse().unwrap()).collect();
        TemplateVars::new(&nets)
    }

    #[test]
    fn containerd_template_dual_stack() {
        // containerd's own UpdateRuntimeConfig test template and output.
        let template = r#"{
	"name": "test-pod-network",
	"cniVersion": "1.0.0",
	"plugins": [
	{
		"type": "ptp",
		"mtu": 1460,
		"ipam": {
			"type": "host-local",
			"subnet": "{{.PodCIDR}}",
			"ranges": [{{range $i, $range := .PodCIDRRanges}}{{if $i}}, {{end}}[{"subnet": "{{$range}}"}]{{end}}],
			"routes": [{{range $i, $route := .Routes}}{{if $i}}, {{end}}{"dst": "{{$route}}"}{{end}}]
		}
	}
	]
}"#;
        let expected = r#"{
	"name": "test-pod-network",
	"cniVersion": "1.0.0",
	"plugins": [
	{
		"type": "ptp",
		"mtu": 1460,
		"ipam": {
			"type": "host-local",
			"subnet": "10.0.0.0/24",
			"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "2001:4860:4860::/64"}]],
			"routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
		}
	}
	]
}"#;
        let out = render(template, &vars(&["10.0.0.0/24", "2001:4860:4860::/64"])).unwrap();
        assert_eq!(out, expected);
    }

    #[test]
    fn trims_else_and_dot() {
        let t = "[\n  {{- range $i, $r := .PodCIDRRanges}}{{if $i}},{{else}}first:{{end}}{{.}}{{- end}}\n]";
        assert_eq!(
            render(t, &vars(&["10.1.0.0/16"])).unwrap(),
            "[first:10.1.0.0/16\n]"
        );
        let t = "a {{- /* note */ -}}   b {{.PodCIDR -}}\n c";
        assert_eq!(render(t, &vars(&["fd00::/64"])).unwrap(), "ab fd00::/64c");
        assert_eq!(
            render("{{range .Routes}}{{.}};{{end}}", &vars(&["fd00::/64"])).unwrap(),
            "::/0;"
        );
    }

    #[test]
    fn unsupported_is_named() {
        for (t, needle) in [
            ("{{.NodeName}}", ".NodeName"),
            ("{{range .PodCIDRRanges}}", "no {{end}}"),
            ("{{end}}", "unexpected"),
            ("{{.PodCIDRRanges}}", "list"),
            ("{{ printf \"%s\" .PodCIDR }}", "printf"),
            ("{{.PodCIDR", "unclosed"),
        ] {
            let err = render(t, &vars(&["10.0.0.0/8"])).unwrap_err();
            assert!(err.contains(needle), "{t}: {err}");
        }
    }
}
