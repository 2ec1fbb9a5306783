//! Statements held for approval.
//!
//! A statement whose guardrail says `requireApproval` runs under a live grant (an approved
//! AccessRequest for exactly the query string shown to the approver, values included; for
//! its shape when the guardrail says `grantCovers: shape`; or for the guardrail in the
//! session when the policy's `grantScope` is `session`). Without one, the sidecar creates an AccessRequest, tells the client in a
//! NoticeResponse how to approve it, and holds the statement until an approver decides or
//! the policy's timeout passes. The hold is an await point of the session's own task, taken
//! after what preceded the statement was flushed upstream: other sessions are not blocked,
//! and the statement (with the rest of its batch) is forwarded or refused in protocol order.
//!
//! Simple queries are held at the Query message. Extended-protocol statements are held at
//! Parse, except those with `$n` parameters whose grant covers values: they are held at each
//! Bind, and the approver is shown the statement with the bound values. A SQL `PREPARE` of
//! such a statement is not held: each use of it is, a Bind with its bound values, a SQL
//! `EXECUTE` as written (its arguments are its values), and the approver is shown the
//! definition it runs. Either way the prepared statement (or portal) remembers the grant,
//! and each Execute of it checks that the grant is still live (refusing the Execute once it
//! has run out, so that the client prepares the statement again and a new request is made)
//! and records the use.
//!
//! When the sidecar stops while a statement is held, the client gets a FATAL error saying
//! the statement did not run; the request is left to the operator, which expires it at the
//! policy's timeout.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use portcullis_crds::audit::{
    ApprovalRecord, ApprovalStep, AuditEvent, Decision, RuleRef, StatementRecord,
};
use portcullis_crds::{GrantCovers, Operation, Requester};
use tokio::io::AsyncWriteExt;

use super::{Decided, Durable, Frontend, Message, Prepared, BUILTIN_POLICY};
use crate::approval::{
    sql_operation, sql_use_operation, ApprovalError, Ask, Grant, GrantKey, Outcome,
};
use crate::policy::analyze::{Effect, StatementFacts};
use crate::policy::guardrails::{Guardrails, Verdict};
use crate::postgres::codec::{put_error, put_message};
use crate::postgres::results::SQLSTATE_REFUSED;

/// SQLSTATE of a session ended by the sidecar's shutdown (admin_shutdown).
const SQLSTATE_SHUTDOWN: &str = "57P01";

/// A statement of a query string that needs an approval.
#[derive(Clone, Debug)]
pub(super) struct Need {
    index: usize,
    fingerprint: String,
    rule: RuleRef,
    /// What the approver is shown and the grant covers; `None` until the values of a
    /// prepared statement are bound.
    operation: Option<Operation>,
    /// The statement text, as the client sent it.
    sql: String,
    /// The definitions the statement runs (a use of prepared statements), shown apart.
    runs: Vec<String>,
}

impl Need {
    /// The statement at `index` of the decided records, part of the query string `sql`
    /// (`extended`: the text of a Parse, whose values come with Bind), running the prepared
    /// definitions `runs` (see [`definitions`]).
    pub(super) fn new(
        index: usize,
        facts: &StatementFacts,
        verdict: &Verdict,
        guardrails: &Guardrails,
        sql: &str,
        runs: Vec<String>,
        extended: bool,
    ) -> Need {
        let rule = verdict.rule.clone().unwrap_or(RuleRef {
            policy: BUILTIN_POLICY.into(),
            rule: "require-approval".into(),
        });
        let opted = guardrails
            .policies()
            .iter()
            .find(|p| p.name == rule.policy)
            .and_then(|p| p.guardrails.iter().find(|g| g.name == rule.rule))
            .map_or(GrantCovers::Values, |g| g.grant_covers);
        // Shape grants cover only row reads and writes calling known read-only functions;
        // code (DO, CREATE FUNCTION, CALL, other functions) is always granted by value.
        let shape = opted == GrantCovers::Shape
            && facts.effect <= Effect::Writes
            && !facts.opaque_body
            && runs.is_empty();
        let operation = if shape {
            Some(sql_operation(facts.normalized.clone(), GrantCovers::Shape))
        } else if extended && has_parameters(sql) {
            // Asked for at Bind, with the values.
            None
        } else {
            Some(sql_use_operation(
                sql.to_owned(),
                runs.clone(),
                Vec::new(),
                GrantCovers::Values,
            ))
        };
        Need {
            index,
            fingerprint: facts.fingerprint.clone(),
            rule,
            operation,
            sql: sql.to_owned(),
            runs,
        }
    }

    /// The need of each use of the `PREPARE` statement `facts` when its statement has `$n`
    /// parameters and the grant covers values: asked for at Bind or `EXECUTE`, with the bound
    /// values, the approver shown the `PREPARE` statement. `None` for a shape grant or a
    /// statement without parameters (held at `PREPARE`, granted as shown).
    pub(super) fn at_use(&self, facts: &StatementFacts) -> Option<Need> {
        if self
            .operation
            .as_ref()
            .is_some_and(|o| o.covers == GrantCovers::Shape)
        {
            return None;
        }
        let text = facts.ast.as_ref()?.to_string();
        has_parameters(&text).then(|| Need {
            operation: None,
            sql: text,
            runs: Vec::new(),
            ..self.clone()
        })
    }

    /// Whether the approval is asked for when the values are bound.
    pub(super) fn at_bind(&self) -> bool {
        self.operation.is_none()
    }

    /// This need with the values of a Bind: the approver is shown, and the grant covers, the
    /// statement with exactly these values (in their own field, apart from the statement).
    pub(super) fn bound(&self, values: &[String]) -> Need {
        Need {
            operation: Some(sql_use_operation(
                self.sql.clone(),
                self.runs.clone(),
                values.to_vec(),
                GrantCovers::Values,
            )),
            ..self.clone()
        }
    }
}

/// The parameter values of a Bind message, as shown to an approver: text values as SQL
/// literals, binary ones as hex, `NULL`, one an entry (`$1 = 'Ghent'`); `None` when the
/// message cannot be read.
pub fn bound_values(body: &[u8]) -> Option<Vec<String>> {
    fn cstr(b: &[u8], at: &mut usize) -> Option<()> {
        let end = b.get(*at..)?.iter().position(|c| *c == 0)?;
        *at += end + 1;
        Some(())
    }
    fn int(b: &[u8], at: &mut usize, n: usize) -> Option<i64> {
        let bytes = b.get(*at..*at + n)?;
        *at += n;
        Some(match n {
            2 => i64::from(i16::from_be_bytes([bytes[0], bytes[1]])),
            _ => i64::from(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])),
        })
    }
    let mut at = 0;
    cstr(body, &mut at)?;
    cstr(body, &mut at)?;
    let nformats = usize::try_from(int(body, &mut at, 2)?).ok()?;
    let mut formats = Vec::with_capacity(nformats);
    for _ in 0..nformats {
        formats.push(int(body, &mut at, 2)?);
    }
    let nparams = usize::try_from(int(body, &mut at, 2)?).ok()?;
    let mut shown = Vec::with_capacity(nparams);
    for i in 0..nparams {
        let len = int(body, &mut at, 4)?;
        let format = match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => *formats.get(i)?,
        };
        let value = if len < 0 {
            "NULL".to_owned()
        } else {
            let n = usize::try_from(len).ok()?;
            let bytes = body.get(at..at + n)?;
            at += n;
            match (format, std::str::from_utf8(bytes)) {
                (0, Ok(text)) => format!("'{}'", text.replace('\'', "''")),
                _ => format!("'\\x{}' (binary)", hex::encode(bytes)),
            }
        };
        shown.push(format!("${} = {value}", i + 1));
    }
    Some(shown)
}

/// The definitions a use of prepared statements (`EXECUTE name`) runs, as shown to the
/// approver apart from the statement: a grant then covers this use of exactly these
/// definitions.
pub(super) fn definitions<'a>(
    definitions: impl Iterator<Item = &'a std::sync::Arc<StatementFacts>>,
) -> Vec<String> {
    definitions
        .map(|d| match &d.ast {
            Some(ast) => ast.to_string(),
            None => d.normalized.clone(),
        })
        .collect()
}

/// Whether `sql` has `$n` parameters.
fn has_parameters(sql: &str) -> bool {
    use sqlparser::tokenizer::{Token, Tokenizer};
    match Tokenizer::new(&sqlparser::dialect::PostgreSqlDialect {}, sql).tokenize() {
        Ok(tokens) => tokens
            .iter()
            .any(|t| matches!(t, Token::Placeholder(p) if p.starts_with('$'))),
        // Text the tokenizer cannot read is treated as having them (fail closed).
        Err(_) => true,
    }
}

/// A message whose statements wait for approval.
pub(super) enum Held {
    /// A simple Query.
    Query { message: Message, decided: Decided },
    /// A Parse of the extended protocol.
    Parse {
        name: String,
        message: Message,
        decided: Decided,
    },
    /// A Bind of a prepared statement whose approval covers its values.
    Bind {
        portal: String,
        prepared: Box<Prepared>,
        message: Message,
        needs: Vec<Need>,
    },
}

/// The grant a prepared statement runs under.
#[derive(Clone, Debug)]
pub(super) struct GrantRef {
    name: String,
    pub(super) expires_at: Timestamp,
}

/// The refusal of a statement that requires approval when the sidecar cannot ask for one.
pub(super) fn standalone_refusal(verdict: &Verdict) -> String {
    format!(
        "{}; this sidecar runs without a connection to the Kubernetes API (standalone mode), so no AccessRequest can be made and the statement is refused",
        verdict
            .reason
            .as_deref()
            .unwrap_or("statement requires approval")
    )
}

/// Why a held statement does not run, and the request it concerns.
struct Refused {
    message: String,
    request: Option<String>,
}

impl Frontend {
    /// Obtain the approvals a held message needs, then forward it or refuse it.
    pub(super) async fn resolve(&mut self, held: Held) {
        match held {
            Held::Query {
                message,
                mut decided,
            } => {
                if let Some(grants) = self.obtain_all(&mut decided).await {
                    for (grant, statement_id, need) in grants {
                        // A PREPARE held here: each Execute of it checks this grant.
                        if let Some(p) = decided
                            .changes
                            .get_mut(need.index)
                            .and_then(|c| c.prepare.as_mut())
                        {
                            p.grant = Some(GrantRef {
                                name: grant.name.clone(),
                                expires_at: grant.expires_at,
                            });
                        }
                        self.used(statement_id, &grant, &need);
                    }
                }
                self.finish_query(decided, &message);
            }
            Held::Parse {
                name,
                message,
                mut decided,
            } => {
                let grant = self.obtain_all(&mut decided).await.and_then(|grants| {
                    grants
                        .into_iter()
                        .map(|(g, _, _)| GrantRef {
                            name: g.name,
                            expires_at: g.expires_at,
                        })
                        .min_by_key(|g| g.expires_at)
                });
                self.finish_parse(name, decided, &message, grant, Vec::new());
            }
            Held::Bind {
                portal,
                mut prepared,
                message,
                needs,
            } => {
                let statement_id = prepared.template.statement_id;
                let mut grant: Option<GrantRef> = None;
                for need in &needs {
                    match self.obtain(need, statement_id).await {
                        Ok(g) => {
                            let g = GrantRef {
                                name: g.name,
                                expires_at: g.expires_at,
                            };
                            if grant.as_ref().is_none_or(|h| g.expires_at < h.expires_at) {
                                grant = Some(g);
                            }
                        }
                        Err(refused) => {
                            // The portal is not made; the server skips to the next Sync.
                            self.portals.insert(portal, None);
                            self.refuse(true, SQLSTATE_REFUSED, refused.message);
                            return;
                        }
                    }
                }
                prepared.grant = grant;
                self.portals.insert(portal, Some(*prepared));
                put_message(&mut self.out, message.tag, &message.body);
            }
        }
    }

    /// Grants for every statement that needs one, or `None` after recording the refusal in
    /// `decided`.
    async fn obtain_all(&mut self, decided: &mut Decided) -> Option<Vec<(Grant, u64, Need)>> {
        let needs = std::mem::take(&mut decided.approvals);
        let mut grants = Vec::new();
        for need in needs {
            let statement_id = decided
                .records
                .get(need.index)
                .map_or(0, |(r, _)| r.statement_id);
            match self.obtain(&need, statement_id).await {
                Ok(grant) => {
                    if let Some((record, _)) = decided.records.get_mut(need.index) {
                        record.access_request = Some(grant.name.clone());
                        record.reason = Some(format!(
                            "approved by {} until {:.0}: {}",
                            grant.decided_by, grant.expires_at, grant.reason
                        ));
                    }
                    grants.push((grant, statement_id, need));
                }
                Err(refused) => {
                    refuse_all(decided, &need, refused);
                    return None;
                }
            }
        }
        Some(grants)
    }

    fn requester(&self) -> Requester {
        let fallback = self
            .res
            .approvals
            .as_ref()
            .map(|a| a.namespace().to_owned());
        crate::approval::requester(&self.res.identity, self.ctx.identity(), fallback)
    }

    /// A live grant for `need`: an existing one, or a new request's approval.
    async fn obtain(&mut self, need: &Need, statement_id: u64) -> Result<Grant, Refused> {
        let Some(approvals) = self.res.approvals.clone() else {
            return Err(Refused {
                message: "statement requires approval, but this sidecar runs without a connection to the Kubernetes API".into(),
                request: None,
            });
        };
        let settings = self
            .guardrails
            .policies()
            .iter()
            .find(|p| p.name == need.rule.policy)
            .and_then(|p| p.approval.clone());
        let Some(settings) = settings else {
            return Err(Refused {
                message: format!(
                    "statement requires approval (guardrail {} of policy {}), but the policy has no approval settings",
                    need.rule.rule, need.rule.policy
                ),
                request: None,
            });
        };
        let Some(operation) = need.operation.clone() else {
            return Err(Refused {
                message: format!(
                    "statement requires approval (guardrail {} of policy {}), and its values are not bound yet",
                    need.rule.rule, need.rule.policy
                ),
                request: None,
            });
        };
        let requester = self.requester();
        let key = GrantKey {
            resource: self.res.name.clone(),
            service_account: requester.service_account.clone(),
            policy: need.rule.policy.clone(),
            rule: need.rule.rule.clone(),
            fingerprint: operation.fingerprint.clone(),
            scope: settings.grant_scope,
            session: self.ctx.session_id().to_owned(),
            grant_seconds: settings.grant_seconds,
            required_approvals: settings.required_approvals,
        };
        let step = |step, request: &str| ApprovalRecord {
            step,
            request: request.to_owned(),
            namespace: approvals.namespace().to_owned(),
            statement_id: Some(statement_id),
            fingerprint: need.fingerprint.clone(),
            rule: need.rule.clone(),
            decided_by: None,
            reason: None,
            justification: None,
            expires_at: None,
        };
        let failed = |e: &dyn std::fmt::Display| {
            format!(
                "statement requires approval (guardrail {} of policy {}), but the approval service is unavailable: {e}",
                need.rule.rule, need.rule.policy
            )
        };
        match approvals.find_grant(&key).await {
            Ok(Some(grant)) => return Ok(grant),
            Ok(None) => {}
            Err(e) => return Err(self.unavailable(step(ApprovalStep::Failed, ""), failed(&e))),
        }
        let ask = Ask {
            key,
            requester,
            operation,
            justification: self.justification.clone(),
            timeout_seconds: settings.timeout_seconds,
            max_pending: settings.max_pending,
        };
        let name = match approvals.request(&ask).await {
            Ok((n, reused)) => {
                if !reused {
                    self.approval_record(ApprovalRecord {
                        justification: self.justification.clone(),
                        ..step(ApprovalStep::Requested, &n)
                    });
                }
                n
            }
            Err(e @ ApprovalError::TooManyPending(_)) => {
                let message = format!(
                    "statement requires approval (guardrail {} of policy {}), but no new AccessRequest is made: {e}",
                    need.rule.rule, need.rule.policy
                );
                return Err(self.unavailable(step(ApprovalStep::Failed, ""), message));
            }
            Err(e) => return Err(self.unavailable(step(ApprovalStep::Failed, ""), failed(&e))),
        };
        let namespace = approvals.namespace().to_owned();
        tracing::info!(session = %self.ctx.session_id(), request = %name, rule = %need.rule.rule, "statement held for approval");
        self.notice(&format!(
            "statement held for approval (guardrail {} of policy {}): AccessRequest {name} in namespace {namespace}; waiting up to {}s for a decision. An approver runs: kubectl portcullis approve {name} -n {namespace} --reason \"...\"",
            need.rule.rule, need.rule.policy, settings.timeout_seconds
        ))
        .await;
        let timeout = Duration::from_secs(settings.timeout_seconds);
        let _holding = approvals.holding();
        let outcome = approvals
            .wait(
                &name,
                timeout,
                settings.grant_seconds,
                settings.required_approvals,
            )
            .await;
        match outcome {
            Ok(Outcome::Approved(grant)) => {
                self.approval_record(ApprovalRecord {
                    decided_by: Some(grant.decided_by.clone()),
                    reason: Some(grant.reason.clone()),
                    expires_at: Some(format!("{:.0}", grant.expires_at)),
                    ..step(ApprovalStep::Approved, &name)
                });
                Ok(grant)
            }
            Ok(Outcome::Denied { decided_by, reason }) => {
                self.approval_record(ApprovalRecord {
                    decided_by: Some(decided_by.clone()),
                    reason: Some(reason.clone()),
                    ..step(ApprovalStep::Denied, &name)
                });
                Err(Refused {
                    message: format!(
                        "Denied by {decided_by}: {reason} (AccessRequest {namespace}/{name})"
                    ),
                    request: Some(name),
                })
            }
            Ok(Outcome::TimedOut) => {
                let message = format!(
                    "Timed out after {}s waiting for a decision on AccessRequest {namespace}/{name}; the statement was not run",
                    settings.timeout_seconds
                );
                self.approval_record(ApprovalRecord {
                    reason: Some(message.clone()),
                    ..step(ApprovalStep::TimedOut, &name)
                });
                Err(Refused {
                    message,
                    request: Some(name),
                })
            }
            Err(ApprovalError::ShuttingDown) => {
                let message = format!(
                    "the sidecar is shutting down: the statement held for approval (AccessRequest {namespace}/{name}) was not run; reconnect and run it again"
                );
                self.approval_record(ApprovalRecord {
                    reason: Some(message.clone()),
                    ..step(ApprovalStep::Failed, &name)
                });
                // The session ends with the sidecar: tell the client now, in a FATAL error,
                // rather than by a dropped connection.
                let mut out = bytes::BytesMut::new();
                put_error(&mut out, "FATAL", SQLSTATE_SHUTDOWN, &message);
                let mut w = self.client_out.lock().await;
                let _ = w.write_all(&out).await;
                let _ = w.shutdown().await;
                Err(Refused {
                    message,
                    request: Some(name),
                })
            }
            Err(e) => {
                let message = failed(&e);
                self.approval_record(ApprovalRecord {
                    reason: Some(message.clone()),
                    ..step(ApprovalStep::Failed, &name)
                });
                Err(Refused {
                    message,
                    request: Some(name),
                })
            }
        }
    }

    /// Record that an operation runs under `grant`, and count it on the request.
    fn used(&mut self, statement_id: u64, grant: &Grant, need: &Need) {
        let Some(approvals) = self.res.approvals.clone() else {
            return;
        };
        self.approval_record(ApprovalRecord {
            step: ApprovalStep::Used,
            request: grant.name.clone(),
            namespace: approvals.namespace().to_owned(),
            statement_id: Some(statement_id),
            fingerprint: need.fingerprint.clone(),
            rule: need.rule.clone(),
            decided_by: Some(grant.decided_by.clone()),
            reason: None,
            justification: None,
            expires_at: Some(format!("{:.0}", grant.expires_at)),
        });
    }

    /// An Execute of a statement prepared under `grant`: `true` (and the use recorded) while
    /// the grant is live; otherwise the Execute is recorded and refused.
    pub(super) fn use_prepared_grant(
        &mut self,
        grant: &GrantRef,
        record: &mut StatementRecord,
    ) -> bool {
        let Some(approvals) = self.res.approvals.clone() else {
            return false;
        };
        let rule = record.rule.clone().unwrap_or(RuleRef {
            policy: BUILTIN_POLICY.into(),
            rule: "require-approval".into(),
        });
        let base = ApprovalRecord {
            step: ApprovalStep::Used,
            request: grant.name.clone(),
            namespace: approvals.namespace().to_owned(),
            statement_id: Some(record.statement_id),
            fingerprint: record.fingerprint.clone(),
            rule,
            decided_by: None,
            reason: None,
            justification: None,
            expires_at: Some(format!("{:.0}", grant.expires_at)),
        };
        record.access_request = Some(grant.name.clone());
        if Timestamp::now() < grant.expires_at {
            self.approval_record(base);
            return true;
        }
        let message = format!(
            "the approval of AccessRequest {}/{} ran out at {:.0}; prepare the statement again to request a new approval",
            approvals.namespace(),
            grant.name,
            grant.expires_at
        );
        record.reason = Some(message.clone());
        self.record(record.clone(), Durable::Written);
        self.approval_record(ApprovalRecord {
            step: ApprovalStep::Expired,
            reason: Some(message.clone()),
            ..base
        });
        self.refuse(true, SQLSTATE_REFUSED, message);
        false
    }

    /// Record that the approval service could not be used; the refusal the client gets.
    fn unavailable(&mut self, failed: ApprovalRecord, message: String) -> Refused {
        self.approval_record(ApprovalRecord {
            reason: Some(message.clone()),
            ..failed
        });
        Refused {
            message,
            request: None,
        }
    }

    /// Queue an approval record; like statement records, it is durable before the next
    /// bytes leave for the server.
    fn approval_record(&mut self, record: ApprovalRecord) {
        match self
            .res
            .spool
            .append(&self.ctx, AuditEvent::Approval(record))
        {
            Ok(seq) => self.pending_seq = self.pending_seq.max(seq),
            Err(e) => {
                tracing::error!(error = %e, "approval record could not be queued");
                self.pending_seq = u64::MAX;
            }
        }
    }

    /// Send the client a NoticeResponse now.
    async fn notice(&self, message: &str) {
        let mut body = Vec::with_capacity(message.len() + 32);
        for (k, v) in [
            (b'S', "NOTICE"),
            (b'V', "NOTICE"),
            (b'C', "00000"),
            (b'M', message),
        ] {
            body.push(k);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut out = bytes::BytesMut::new();
        put_message(&mut out, b'N', &body);
        let mut w = self.client_out.lock().await;
        if let Err(e) = w.write_all(&out).await {
            tracing::debug!(error = %e, "approval notice not delivered");
        }
    }
}

/// Refuse the whole query string because `need` was not approved.
fn refuse_all(decided: &mut Decided, need: &Need, refused: Refused) {
    for (i, (record, _)) in decided.records.iter_mut().enumerate() {
        if i == need.index {
            record.reason = Some(refused.message.clone());
            record.access_request = refused.request.clone();
        } else if matches!(record.decision, Decision::Allow | Decision::Audit) {
            record.decision = Decision::Deny;
            record.rule = Some(need.rule.clone());
            record.reason = Some(format!(
                "refused with the query string it belongs to: {}",
                refused.message
            ));
        } else if record.decision == Decision::RequireApproval && record.access_request.is_some() {
            record.reason = Some(format!(
                "not run: refused with the query string it belongs to: {}",
                refused.message
            ));
        }
    }
    decided.refusal = Some((SQLSTATE_REFUSED, refused.message));
}

#[cfg(test)]
mod tests {
    use super::bound_values;

    fn bind(formats: &[i16], params: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = b"portal\0stmt\0".to_vec();
        b.extend((formats.len() as i16).to_be_bytes());
        for f in formats {
            b.extend(f.to_be_bytes());
        }
        b.extend((params.len() as i16).to_be_bytes());
        for p in params {
            match p {
                None => b.extend((-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend((v.len() as i32).to_be_bytes());
                    b.extend(*v);
                }
            }
        }
        b.extend(0i16.to_be_bytes());
        b
    }

    #[test]
    fn bound_values_are_shown_exactly() {
        assert_eq!(
            bound_values(&bind(&[], &[Some(b"it's"), None])),
            Some(vec!["$1 = 'it''s'".to_owned(), "$2 = NULL".to_owned()])
        );
        assert_eq!(
            bound_values(&bind(&[0, 1], &[Some(b"7"), Some(&[0, 0, 0, 12])])),
            Some(vec![
                "$1 = '7'".to_owned(),
                "$2 = '\\x0000000c' (binary)".to_owned()
            ])
        );
        assert_eq!(bound_values(&bind(&[], &[])), Some(Vec::new()));
        // A truncated message is not read.
        let mut short = bind(&[], &[Some(b"abc")]);
        short.truncate(short.len() - 4);
        assert_eq!(bound_values(&short), None);
    }
}
