//! Reading Portcullis manifests (multi-document YAML) into the typed API, with the same CEL
//! rules the API server enforces evaluated locally, so a bad manifest fails with the message a
//! user would see from `kubectl apply`.

use serde::Deserialize;
use thiserror::Error;

use crate::{AccessRequest, AuditRetention, GatewayPolicy, ProtectedResource, GROUP, VERSION};

/// One object of a manifest file.
#[derive(Debug, Clone, PartialEq)]
pub enum Manifest {
    /// A ProtectedResource.
    ProtectedResource(Box<ProtectedResource>),
    /// A GatewayPolicy.
    GatewayPolicy(Box<GatewayPolicy>),
    /// An AccessRequest.
    AccessRequest(Box<AccessRequest>),
    /// An AuditRetention.
    AuditRetention(Box<AuditRetention>),
    /// Any object of another API (a Namespace, a Deployment, a Secret).
    Other {
        /// `apiVersion` of the object.
        api_version: String,
        /// `kind` of the object.
        kind: String,
    },
}

/// Why a manifest was refused.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// The text is not YAML, or a document is not an object with `apiVersion` and `kind`.
    #[error("document {doc}: not a Kubernetes object: {source}")]
    NotAnObject {
        /// 1-based index of the document in the file.
        doc: usize,
        /// The parser's error.
        source: serde_yaml::Error,
    },
    /// A Portcullis object whose fields do not match the schema (unknown enum value, wrong
    /// type, missing required field).
    #[error("document {doc}: {kind} {name}: {message}")]
    Schema {
        /// 1-based index of the document in the file.
        doc: usize,
        /// Kind of the object.
        kind: String,
        /// `metadata.name`, or `(unnamed)`.
        name: String,
        /// The deserializer's message, with the field path.
        message: String,
    },
    /// A Portcullis object that breaks one of the CRD's CEL rules.
    #[error("document {doc}: {kind} {name}: {message}")]
    Rule {
        /// 1-based index of the document in the file.
        doc: usize,
        /// Kind of the object.
        kind: String,
        /// `metadata.name`, or `(unnamed)`.
        name: String,
        /// Every broken rule, with its field path and message.
        message: String,
    },
    /// A Portcullis kind this version of the API does not know.
    #[error("document {doc}: unknown kind {kind} in {api_version}")]
    UnknownKind {
        /// 1-based index of the document in the file.
        doc: usize,
        /// The object's `apiVersion`.
        api_version: String,
        /// The object's `kind`.
        kind: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: NameOnly,
}

#[derive(Deserialize, Default)]
struct NameOnly {
    #[serde(default)]
    name: Option<String>,
}

/// Parse every document of a YAML text, check Portcullis objects against the schema and the
/// CEL rules, and return them in order. Empty documents are skipped.
pub fn parse_manifests(text: &str) -> Result<Vec<Manifest>, ManifestError> {
    let mut out = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = i + 1;
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|source| ManifestError::NotAnObject { doc, source })?;
        if value.is_null() {
            continue;
        }
        out.push(parse_object(doc, value)?);
    }
    Ok(out)
}

fn parse_object(doc: usize, value: serde_yaml::Value) -> Result<Manifest, ManifestError> {
    let meta: TypeMeta = serde_yaml::from_value(value.clone())
        .map_err(|source| ManifestError::NotAnObject { doc, source })?;
    let expected = format!("{GROUP}/{VERSION}");
    if !meta.api_version.starts_with(&format!("{GROUP}/")) {
        return Ok(Manifest::Other {
            api_version: meta.api_version,
            kind: meta.kind,
        });
    }
    let name = meta.metadata.name.unwrap_or_else(|| "(unnamed)".to_owned());
    if meta.api_version != expected {
        return Err(ManifestError::UnknownKind {
            doc,
            api_version: meta.api_version,
            kind: meta.kind,
        });
    }
    let ctx = Ctx {
        doc,
        kind: meta.kind.clone(),
        name,
    };
    match meta.kind.as_str() {
        "ProtectedResource" => {
            let obj: ProtectedResource = ctx.typed(value)?;
            ctx.rules(obj.validate_cel())?;
            Ok(Manifest::ProtectedResource(Box::new(obj)))
        }
        "GatewayPolicy" => {
            let obj: GatewayPolicy = ctx.typed(value)?;
            ctx.rules(obj.validate_cel())?;
            Ok(Manifest::GatewayPolicy(Box::new(obj)))
        }
        "AccessRequest" => {
            let obj: AccessRequest = ctx.typed(value)?;
            ctx.rules(obj.validate_cel())?;
            Ok(Manifest::AccessRequest(Box::new(obj)))
        }
        "AuditRetention" => {
            let obj: AuditRetention = ctx.typed(value)?;
            ctx.rules(obj.validate_cel())?;
            Ok(Manifest::AuditRetention(Box::new(obj)))
        }
        _ => Err(ManifestError::UnknownKind {
            doc,
            api_version: meta.api_version,
            kind: meta.kind,
        }),
    }
}

struct Ctx {
    doc: usize,
    kind: String,
    name: String,
}

impl Ctx {
    fn typed<T: serde::de::DeserializeOwned>(
        &self,
        value: serde_yaml::Value,
    ) -> Result<T, ManifestError> {
        // Through serde_path_to_error so the message names the field, as the API server does.
        serde_path_to_error::deserialize(value).map_err(|e| ManifestError::Schema {
            doc: self.doc,
            kind: self.kind.clone(),
            name: self.name.clone(),
            message: format!("{}: {}", e.path(), e.inner()),
        })
    }

    fn rules(
        &self,
        result: Result<(), kube::core::cel::ValidationErrors>,
    ) -> Result<(), ManifestError> {
        result.map_err(|errors| ManifestError::Rule {
            doc: self.doc,
            kind: self.kind.clone(),
            name: self.name.clone(),
            message: errors
                .as_slice()
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        })
    }
}
