//! Relation attributes: values computed from other objects and written back to them.
//!
//! `groupMembership = "PosixGroup:cn,memberUid=uid"` reads as: the `cn` of every
//! PosixGroup whose `memberUid` holds this object's `uid`. Setting the attribute adds
//! or removes this object's `uid` in those groups' `memberUid` and commits them.

/// A parsed relation parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationSpec {
    /// The other objects' type.
    pub foreign_type: String,
    /// The attribute of theirs that this attribute shows.
    pub foreign_value: String,
    /// Their attribute that holds our match value.
    pub foreign_match: String,
    /// Our attribute whose value they hold.
    pub local_match: String,
}

impl RelationSpec {
    pub fn parse(spec: &str) -> Result<RelationSpec, String> {
        let bad = || format!("'{spec}' is not of the form Type:attribute,theirAttribute=ourAttribute");
        let (foreign_type, rest) = spec.split_once(':').ok_or_else(bad)?;
        let (foreign_value, matching) = rest.split_once(',').ok_or_else(bad)?;
        let (foreign_match, local_match) = matching.split_once('=').ok_or_else(bad)?;
        let parts = [foreign_type, foreign_value, foreign_match, local_match].map(str::trim);
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        Ok(RelationSpec {
            foreign_type: parts[0].to_owned(),
            foreign_value: parts[1].to_owned(),
            foreign_match: parts[2].to_owned(),
            local_match: parts[3].to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_relation_form() {
        let r = RelationSpec::parse("PosixGroup:cn,memberUid=uid").expect("parse");
        assert_eq!((r.foreign_type.as_str(), r.foreign_value.as_str()), ("PosixGroup", "cn"));
        assert_eq!((r.foreign_match.as_str(), r.local_match.as_str()), ("memberUid", "uid"));
        assert!(RelationSpec::parse("PosixGroup:cn").is_err());
        assert!(RelationSpec::parse("PosixGroup:cn,=uid").is_err());
    }
}
