//! Opening objects: finding the entry, gathering its values from every backend, and
//! shaping them with in-filters; and new, unsaved objects with their defaults.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use super::{
    ObjectError, ObjectState, ObjectStore, PrimaryBackend, Result, Storage, StoreEnv, decode_column, from_backend,
    from_backend_one, not_found, relation_spec,
};
use crate::backend::ldap::LoadedEntry;
use crate::description::{AttributeDef, Catalogue, ObjectType};
use crate::filters::{self, Props, Scope, clip};
use clacks_core::dn::parent_dn;
use clacks_core::rpc::ErrorCode;

impl ObjectStore {
    /// Opens the object at a DN or with a UUID.
    pub async fn load(&self, target: &str) -> Result<ObjectState> {
        let catalogue = self.catalogue();
        let by_uuid = !target.contains('=');
        for primary in self.primaries() {
            // The type is known only after the read: any type's binary attributes count.
            if let Some(found) = primary.read(target, by_uuid, catalogue.binary_attributes()).await? {
                let (base, active) = primary.identify(&catalogue, &found.entry)?;
                return self.assemble(&catalogue, primary, found, base, active).await;
            }
        }
        Err(not_found(target))
    }

    async fn assemble(
        &self,
        catalogue: &Catalogue,
        primary: &dyn PrimaryBackend,
        found: LoadedEntry,
        base: String,
        mut active: BTreeSet<String>,
    ) -> Result<ObjectState> {
        let LoadedEntry { entry, attrs: entry_values } = found;
        // Extensions the entry does not mark are active when they have a row.
        for ext in catalogue.extensions_of(&base) {
            if !primary.marks(ext) && self.sql.has_row(&ext.name, &entry.uuid).await? {
                active.insert(ext.name.clone());
            }
        }
        let mut state = ObjectState {
            uuid: Some(entry.uuid.clone()),
            parent: parent_dn(&entry.dn).to_owned(),
            dn: Some(entry.dn),
            base_type: base,
            active,
            version: entry.version,
            in_ldap: primary.is_directory(),
            ..ObjectState::default()
        };
        let mut props = self.read_values(catalogue, &state, &entry_values).await?;
        let types = state.effective_types();
        // Computed attributes start from their defaults; then in-filters shape the rest.
        for (owner, attr) in catalogue.attributes_of(&state.base_type) {
            if !types.contains(&owner.name) {
                continue;
            }
            if self.storage(owner, attr) == Storage::Computed
                && let Some(default) = &attr.default
            {
                props.insert(attr.name.clone(), attr.value_type.parse_text(default).into_iter().collect());
            }
        }
        let env = StoreEnv { store: self };
        for (owner, attr) in catalogue.attributes_of(&state.base_type) {
            if types.contains(&owner.name)
                && !attr.in_filter.is_empty()
                && props.get(&attr.name).is_some_and(|v| !v.is_empty())
            {
                let scope = Scope { env: &env, owner: &owner.name, attr: &attr.name, uuid: state.uuid.as_deref() };
                filters::run_chains(&attr.in_filter, &attr.name, &mut props, &scope)
                    .await
                    .map_err(|e| ObjectError::new(ErrorCode::ATTRIBUTE_INVALID, format!("{}: {e}", attr.name)))?;
            }
        }
        state.loaded = props.clone();
        state.values = props;
        Ok(state)
    }

    /// Reads every attribute of the object's active types from where it is stored;
    /// `entry_values` are those the entry itself keeps.
    pub(super) async fn read_values(
        &self,
        catalogue: &Catalogue,
        state: &ObjectState,
        entry_values: &HashMap<String, Vec<String>>,
    ) -> Result<Props> {
        let types = state.effective_types();
        let mut props = Props::new();
        let mut rows_by_owner: BTreeMap<String, Vec<&AttributeDef>> = BTreeMap::new();
        let mut relations = Vec::new();
        for (owner, attr) in catalogue.attributes_of(&state.base_type) {
            if !types.contains(&owner.name) {
                continue;
            }
            match self.storage(owner, attr) {
                Storage::Entry => {
                    let texts = entry_values.get(&attr.backend_name.to_lowercase());
                    props.insert(attr.name.clone(), texts.map(|t| from_backend(attr, t)).unwrap_or_default());
                }
                Storage::Rows => rows_by_owner.entry(owner.name.clone()).or_default().push(attr),
                Storage::Relation => relations.push((owner.clone(), attr)),
                Storage::Computed => {}
            }
        }
        for (owner, attrs) in rows_by_owner {
            let columns: Vec<String> = attrs.iter().map(|a| a.backend_name.clone()).collect();
            let row = self.sql.load(&owner, state.uuid(), &columns).await?.unwrap_or_default();
            for attr in attrs {
                let values = row.get(&attr.backend_name).map(|text| decode_column(attr, text)).unwrap_or_default();
                props.insert(attr.name.clone(), values.iter().map(|t| from_backend_one(attr, t)).collect());
            }
        }
        for (owner, attr) in relations {
            let values = self.relation_values(&owner, attr, &props).await?;
            props.insert(attr.name.clone(), values);
        }
        Ok(props)
    }

    async fn relation_values(&self, owner: &ObjectType, attr: &AttributeDef, props: &Props) -> Result<Vec<Value>> {
        let spec = relation_spec(owner, attr)?;
        let Some(local) = props.get(&spec.local_match).and_then(|v| v.first()).map(filters::text) else {
            return Ok(Vec::new());
        };
        let mut values: Vec<Value> = self
            .index
            .with_value(&spec.foreign_type, &spec.foreign_match, &local)
            .await?
            .into_iter()
            .flat_map(|doc| doc.values.get(&spec.foreign_value).cloned().unwrap_or_default())
            .map(Value::String)
            .collect();
        values.sort_by_key(filters::text);
        values.dedup();
        Ok(values)
    }

    /// A new, unsaved object of `type_name` below `parent`, with defaults applied.
    pub async fn new_object(&self, parent: &str, type_name: &str) -> Result<ObjectState> {
        let catalogue = self.catalogue();
        let t = ObjectStore::type_of(&catalogue, type_name)?;
        if !t.base_object {
            return Err(ObjectError::new(
                ErrorCode::EXTENSION_REFUSED,
                format!("{type_name} is an extension; open a {} and extend it", t.extends.join(" or ")),
            ));
        }
        self.check_container(&catalogue, parent, type_name).await?;
        let mut state =
            ObjectState { parent: parent.to_owned(), base_type: type_name.to_owned(), ..ObjectState::default() };
        apply_defaults(&mut state, t);
        Ok(state)
    }

    /// Refuses a parent that is missing or whose type does not allow `type_name` below it.
    pub(super) async fn check_container(&self, catalogue: &Catalogue, parent: &str, type_name: &str) -> Result<()> {
        match self.load(parent).await {
            Ok(p) => {
                let parent_type = ObjectStore::type_of(catalogue, &p.base_type)?;
                if parent_type.container.iter().any(|c| c == type_name) {
                    Ok(())
                } else {
                    Err(ObjectError::new(
                        ErrorCode::OBJECT_NOT_SUB_FOR,
                        format!("a {type_name} cannot be placed below the {} {}", p.base_type, clip(parent)),
                    ))
                }
            }
            // An entry of no known type (the directory's own root, say) takes anything.
            Err(e) if e.code == ErrorCode::OBJECT_TYPE_MISMATCH => Ok(()),
            Err(e) if e.code == ErrorCode::OBJECT_NOT_FOUND => Err(ObjectError::new(
                ErrorCode::OBJECT_NOT_FOUND,
                format!("the parent {} does not exist", clip(parent)),
            )),
            Err(e) => Err(e),
        }
    }
}

/// Sets the defaults of `t`'s empty attributes (a new object, or a fresh extension).
pub(super) fn apply_defaults(state: &mut ObjectState, t: &ObjectType) {
    for attr in &t.attributes {
        if let Some(default) = &attr.default
            && state.values.get(&attr.name).is_none_or(Vec::is_empty)
            && let Ok(v) = attr.value_type.parse_text(default)
        {
            state.values.insert(attr.name.clone(), vec![v]);
            state.changed.insert(attr.name.clone());
        }
    }
}
