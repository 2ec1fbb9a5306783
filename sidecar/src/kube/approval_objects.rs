//! Writes to the Portcullis API are refused: approval state is written only by the sidecar's
//! own client (which does not pass through this proxy) and by approvers. Any request other
//! than GET and HEAD whose path, percent-decoded, has a segment naming the `portcullis.dev`
//! group (create, update, patch, delete, deletecollection, and every subresource such as
//! `/status`) is refused with builtin rule `approval-objects`, and recorded like every other
//! refusal.

use http::Method;
use percent_encoding::percent_decode_str;

use crate::policy::guardrails::Verdict;

/// Rule name of the refusal.
pub const RULE: &str = "approval-objects";

/// The refusal of a write to the Portcullis API, if `method` and `path` are one.
pub fn refusal(method: &Method, path: &str) -> Option<Verdict> {
    if matches!(*method, Method::GET | Method::HEAD) {
        return None;
    }
    let decoded = percent_decode_str(path).decode_utf8_lossy();
    let names_group = decoded
        .split('/')
        .any(|segment| segment.trim().eq_ignore_ascii_case(portcullis_crds::GROUP));
    names_group.then(|| {
        Verdict::builtin(
            RULE,
            format!(
                "{method} on the Portcullis API ({}) is refused: AccessRequests and policies are written only by the sidecar and by approvers, never by the agent (rule builtin/{RULE})",
                portcullis_crds::GROUP
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_to_the_group_are_refused_in_every_spelling() {
        let base = "/apis/portcullis.dev/v1alpha1/namespaces/a/accessrequests";
        for (method, path) in [
            (Method::POST, base.to_owned()),
            (Method::PATCH, format!("{base}/r/status")),
            (Method::PUT, format!("{base}/r")),
            (Method::DELETE, format!("{base}/r")),
            (Method::DELETE, base.to_owned()),
            (
                Method::POST,
                "//apis//portcullis%2Edev/v1alpha1/namespaces/a/accessrequests".to_owned(),
            ),
            (
                Method::PATCH,
                "/apis/PORTCULLIS.DEV/v1alpha1/namespaces/a/gatewaypolicies/p".to_owned(),
            ),
        ] {
            assert!(refusal(&method, &path).is_some(), "{method} {path}");
        }
        assert!(refusal(&Method::GET, base).is_none());
        assert!(refusal(&Method::POST, "/api/v1/namespaces/a/configmaps").is_none());
    }
}
