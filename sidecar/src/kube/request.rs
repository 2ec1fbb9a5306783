//! What a Kubernetes API request asks for, read from its method, path and query the way the
//! API server's request-info resolver reads them.

use http::Method;

/// The parts of a request the guardrails and the audit record need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// Kubernetes verb.
    pub verb: String,
    /// API group (empty for core).
    pub api_group: String,
    /// Resource.
    pub resource: String,
    /// Subresource.
    pub subresource: String,
    /// Namespace.
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// The path of a non-resource URL.
    pub path: String,
}

/// Parameters of `pods/exec` and `pods/attach`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecParams {
    /// Command vector (exec).
    pub command: Vec<String>,
    /// Container.
    pub container: String,
    /// Standard input attached.
    pub stdin: bool,
    /// Terminal requested.
    pub tty: bool,
}

/// Query parameters in order, decoded the way Go's `url.ParseQuery` decodes them (which is
/// what kube-apiserver reads): pairs are split on `&`; a pair that contains `;` or an invalid
/// `%` escape is dropped; `+` is a space.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.contains(';'))
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((go_unescape(k)?, go_unescape(v)?))
        })
        .collect()
}

/// Go's `url.QueryUnescape`: `+` is a space, `%XX` a byte; anything else after `%` fails.
fn go_unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    // Go strings hold bytes; invalid UTF-8 reaches the container as it is, so it is kept
    // (replaced, which only makes the analysis see a word that runs nowhere).
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// A boolean query parameter as kube-apiserver converts it into `PodExecOptions`,
/// `PodAttachOptions` or `ListOptions` (`runtime.Convert_Slice_string_To_bool`): absent is
/// `false`; the first value counts; only `0` and `false` (any case) are `false`, every other
/// value (`t`, `f`, `no`, empty) is `true`.
pub fn query_bool(pairs: &[(String, String)], key: &str) -> bool {
    match pairs.iter().find(|(k, _)| k == key) {
        None => false,
        Some((_, v)) => !(v == "0" || v.eq_ignore_ascii_case("false")),
    }
}

impl ExecParams {
    /// Read the exec or attach parameters from the query, as kube-apiserver reads them.
    pub fn from_query(query: Option<&str>) -> Self {
        let pairs = query_pairs(query);
        ExecParams {
            command: pairs
                .iter()
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v.clone())
                .collect(),
            container: pairs
                .iter()
                .find(|(k, _)| k == "container")
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            stdin: query_bool(&pairs, "stdin"),
            tty: query_bool(&pairs, "tty"),
        }
    }
}

impl RequestInfo {
    /// Resolve a request.
    pub fn resolve(method: &Method, path: &str, query: Option<&str>) -> Self {
        // The API server resolves the decoded path (`ex%65c` is `exec`).
        let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
        let path: &str = &decoded;
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (api_group, rest) = match parts.as_slice() {
            ["api", _version, rest @ ..] => (String::new(), rest),
            ["apis", group, _version, rest @ ..] => ((*group).to_owned(), rest),
            _ => {
                return RequestInfo {
                    verb: method.as_str().to_ascii_lowercase(),
                    path: path.to_owned(),
                    ..Default::default()
                }
            }
        };
        let mut rest: Vec<&str> = rest.to_vec();
        let mut namespace = String::new();
        if rest.len() >= 2 && rest[0] == "namespaces" && rest.len() > 2 {
            namespace = rest[1].to_owned();
            rest.drain(..2);
        }
        let resource = rest.first().map(|s| (*s).to_owned()).unwrap_or_default();
        let name = rest.get(1).map(|s| (*s).to_owned()).unwrap_or_default();
        let subresource = rest.get(2..).map(|s| s.join("/")).unwrap_or_default();
        if resource == "namespaces" && namespace.is_empty() {
            namespace = name.clone();
        }
        let pairs = query_pairs(query);
        let watch = query_bool(&pairs, "watch");
        let verb = match *method {
            Method::GET | Method::HEAD if watch => "watch",
            Method::GET | Method::HEAD if name.is_empty() => "list",
            Method::GET | Method::HEAD => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if name.is_empty() => "deletecollection",
            Method::DELETE => "delete",
            _ => "unknown",
        };
        RequestInfo {
            verb: verb.to_owned(),
            api_group,
            resource,
            subresource,
            namespace,
            name,
            path: String::new(),
        }
    }

    /// `resource/subresource` in the form RBAC uses.
    pub fn full_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_resource_requests() {
        let r = RequestInfo::resolve(&Method::GET, "/api/v1/namespaces/shop/pods", None);
        assert_eq!(
            (r.verb.as_str(), r.resource.as_str(), r.namespace.as_str()),
            ("list", "pods", "shop")
        );
        let r = RequestInfo::resolve(&Method::GET, "/api/v1/namespaces/shop/secrets/db", None);
        assert_eq!(
            (r.verb.as_str(), r.resource.as_str(), r.name.as_str()),
            ("get", "secrets", "db")
        );
        let r = RequestInfo::resolve(&Method::GET, "/apis/apps/v1/deployments", Some("watch=1"));
        assert_eq!(
            (r.verb.as_str(), r.api_group.as_str(), r.namespace.as_str()),
            ("watch", "apps", "")
        );
        let r = RequestInfo::resolve(
            &Method::POST,
            "/api/v1/namespaces/shop/pods/web-0/exec",
            Some("command=ls"),
        );
        assert_eq!(r.full_resource(), "pods/exec");
        assert_eq!(r.name, "web-0");
        let r = RequestInfo::resolve(&Method::GET, "/api/v1/namespaces/shop", None);
        assert_eq!(
            (r.resource.as_str(), r.name.as_str(), r.namespace.as_str()),
            ("namespaces", "shop", "shop")
        );
        let r = RequestInfo::resolve(&Method::GET, "/version", None);
        assert_eq!(r.path, "/version");
    }

    #[test]
    fn reads_exec_parameters() {
        let p = ExecParams::from_query(Some(
            "command=sh&command=-c&command=echo+%22a%20b%22&container=app&stdin=true&stdout=true&tty=1",
        ));
        assert_eq!(p.command, vec!["sh", "-c", "echo \"a b\""]);
        assert_eq!(p.container, "app");
        assert!(p.stdin && p.tty);
    }

    #[test]
    fn booleans_and_pairs_are_read_as_kube_apiserver_reads_them() {
        for (value, expected) in [
            ("1", true),
            ("t", true),
            ("T", true),
            ("TRUE", true),
            ("true", true),
            ("True", true),
            ("f", true),
            ("", true),
            ("yes", true),
            ("0", false),
            ("false", false),
            ("FALSE", false),
            ("False", false),
        ] {
            let p = ExecParams::from_query(Some(&format!("command=sh&stdin={value}")));
            assert_eq!(p.stdin, expected, "stdin={value}");
        }
        assert!(!ExecParams::from_query(Some("command=sh")).stdin);
        // The first value counts.
        assert!(!ExecParams::from_query(Some("stdin=0&stdin=1")).stdin);
        // Pairs Go drops: a semicolon, a bad escape.
        let p = ExecParams::from_query(Some("command=ls&command=x;y&command=%zz&command=a+b"));
        assert_eq!(p.command, vec!["ls", "a b"]);
        // Percent-encoded path segments resolve like the API server resolves them.
        let r = RequestInfo::resolve(&Method::POST, "/api/v1/namespaces/a/pods/p/ex%65c", None);
        assert_eq!(r.full_resource(), "pods/exec");
    }
}
