//! Attribute macros that turn a Rust `impl` block into a Clacks plugin — the Rust
//! spelling of the original's `Plugin` class and `@Command` decorator.
//!
//! ```text
//! #[clacks_core::plugin(target = "core")]
//! impl Greeter {
//!     /// Say hello to someone.
//!     #[command]
//!     async fn greet(&self, name: String, times: Option<u32>) -> CommandResult<String> { … }
//! }
//! ```
//!
//! The macro keeps the impl as written and adds `impl clacks_core::command::Plugin`,
//! whose `commands()` describes every `#[command]` method once: its wire name
//! (`snake_case` becomes `lowerCamelCase` unless `name = "…"` is given), parameter names
//! and JSON types (from `clacks_core::command::WireType`), the mandatory help text
//! (`help = "…"` or the doc comment — a command without either does not compile),
//! `needs_user`, `needs_queue`, `idempotent` and `call_type`, and the result's JSON Schema (from the
//! return type, `clacks_core::schema::ResultSchema`). A parameter of type
//! `&CallContext` receives the call context instead of an argument.
//!
//! `#[derive(ResultSchema)]` describes a result row the same way, from its fields.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, FnArg, ImplItem, ItemImpl, Lit, Meta, Pat, Token, Type};

/// Exports the `#[command]` methods of an `impl` block as a plugin on `target`.
#[proc_macro_attribute]
pub fn plugin(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand_plugin(attr.into(), item.into()) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

/// Marks a method for export; only meaningful inside a `#[plugin]` impl, which removes it.
#[proc_macro_attribute]
pub fn command(_attr: TokenStream, item: TokenStream) -> TokenStream {
    item
}

struct CommandOptions {
    name: Option<String>,
    help: Option<String>,
    needs_user: bool,
    needs_queue: bool,
    idempotent: bool,
    call_type: String,
    /// `- name: text` lines of the doc comment.
    param_docs: Vec<ParamDoc>,
}

fn expand_plugin(attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let target = parse_target(attr)?;
    let mut item_impl: ItemImpl = syn::parse2(item)?;
    let self_ty = item_impl.self_ty.clone();
    let mut commands = Vec::new();

    for impl_item in &mut item_impl.items {
        let ImplItem::Fn(method) = impl_item else { continue };
        let Some(pos) = method.attrs.iter().position(|a| a.path().is_ident("command")) else { continue };
        let attr = method.attrs.remove(pos);
        let options = parse_command_options(&attr, &method.attrs)?;
        commands.push(expand_command(&target, method, options)?);
    }

    Ok(quote! {
        #item_impl

        impl ::clacks_core::command::Plugin for #self_ty {
            fn commands(self: ::std::sync::Arc<Self>) -> ::std::vec::Vec<::clacks_core::command::Command> {
                ::std::vec![ #(#commands),* ]
            }
        }
    })
}

fn parse_target(attr: TokenStream2) -> syn::Result<String> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr.clone())?;
    if let Some(meta) = metas.first() {
        return match meta {
            Meta::NameValue(nv) if nv.path.is_ident("target") && metas.len() == 1 => string_value(&nv.value),
            _ => Err(syn::Error::new(meta.span(), "expected only `target = \"…\"`")),
        };
    }
    Err(syn::Error::new(attr.span(), "#[plugin] needs `target = \"…\"`, the plugin's command queue"))
}

fn string_value(expr: &Expr) -> syn::Result<String> {
    match expr {
        Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => Ok(s.value()),
        other => Err(syn::Error::new(other.span(), "expected a string literal")),
    }
}

fn parse_command_options(attr: &syn::Attribute, other_attrs: &[syn::Attribute]) -> syn::Result<CommandOptions> {
    let mut options = CommandOptions {
        name: None,
        help: None,
        needs_user: false,
        needs_queue: false,
        idempotent: false,
        call_type: "normal".into(),
        param_docs: Vec::new(),
    };
    if !matches!(attr.meta, Meta::Path(_)) {
        let metas = attr.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)?;
        for meta in metas {
            match &meta {
                Meta::Path(p) if p.is_ident("needs_user") => options.needs_user = true,
                Meta::Path(p) if p.is_ident("needs_queue") => options.needs_queue = true,
                Meta::Path(p) if p.is_ident("idempotent") => options.idempotent = true,
                Meta::NameValue(nv) if nv.path.is_ident("help") => options.help = Some(string_value(&nv.value)?),
                Meta::NameValue(nv) if nv.path.is_ident("name") => options.name = Some(string_value(&nv.value)?),
                Meta::NameValue(nv) if nv.path.is_ident("call_type") => options.call_type = string_value(&nv.value)?,
                _ => {
                    return Err(syn::Error::new(
                        meta.span(),
                        "expected help = \"…\", name = \"…\", call_type = \"normal|first_result|cumulative\", needs_user, needs_queue or idempotent",
                    ));
                }
            }
        }
    }
    let doc = doc_lines(other_attrs);
    options.param_docs = doc.iter().filter_map(|line| param_doc(line)).collect();
    if options.help.is_none() {
        let first_paragraph: Vec<&str> =
            doc.iter().map(String::as_str).take_while(|line| !line.is_empty() && param_doc(line).is_none()).collect();
        if !first_paragraph.is_empty() {
            options.help = Some(first_paragraph.join(" "));
        }
    }
    Ok(options)
}

/// A `- name: text` or `- name (a|b|c): text` line: the parameter, its allowed values,
/// its description. The rule of `clacks_core::command::param_doc` (the Rust type gives
/// the type here), which this crate cannot depend on.
struct ParamDoc {
    name: String,
    allowed: Vec<String>,
    description: String,
}

fn param_doc(line: &str) -> Option<ParamDoc> {
    let rest = line.strip_prefix("- ").or_else(|| line.strip_prefix("* "))?;
    let (head, description) = rest.split_once(':')?;
    let (name, allowed) = match head.split_once('(') {
        Some((name, values)) => {
            let values = values.trim().strip_suffix(')')?;
            (name, values.split('|').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect())
        }
        None => (head, Vec::new()),
    };
    let name = name.trim().trim_matches('`');
    let identifier = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    identifier.then(|| ParamDoc { name: name.to_owned(), allowed, description: description.trim().to_owned() })
}

fn expand_command(target: &str, method: &syn::ImplItemFn, options: CommandOptions) -> syn::Result<TokenStream2> {
    let method_ident = &method.sig.ident;
    let rust_name = method_ident.to_string();
    // Wire names are computed by `clacks_core::command::wire_name`, the one rule also
    // used for `.rhai` plugins, unless the command names itself.
    let name_expr = match &options.name {
        Some(name) => quote!(::std::string::String::from(#name)),
        None => quote!(::clacks_core::command::wire_name(#rust_name)),
    };
    let Some(help) = options.help else {
        return Err(syn::Error::new(
            method.sig.ident.span(),
            format!("command `{rust_name}` needs help text: add a doc comment or help = \"…\""),
        ));
    };
    let call_type = match options.call_type.as_str() {
        "normal" => quote!(::clacks_core::command::CallType::Normal),
        "first_result" => quote!(::clacks_core::command::CallType::FirstResult),
        "cumulative" => quote!(::clacks_core::command::CallType::Cumulative),
        other => {
            return Err(syn::Error::new(
                method.sig.span(),
                format!("unknown call_type `{other}`; use normal, first_result or cumulative"),
            ));
        }
    };
    match method.sig.inputs.first() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() => {}
        _ => return Err(syn::Error::new(method.sig.span(), "a command takes `&self` first")),
    }

    let mut params = Vec::new();
    let mut documented_names: Vec<String> = options.param_docs.iter().map(|d| d.name.clone()).collect();
    let mut decodes = Vec::new();
    let mut param_idx = 0usize;
    let mut call_args = Vec::new();
    for (idx, input) in method.sig.inputs.iter().skip(1).enumerate() {
        let FnArg::Typed(pat_type) = input else { continue };
        let ty = &*pat_type.ty;
        if is_call_context(ty) {
            if matches!(ty, Type::Reference(_)) {
                call_args.push(quote!(&__ctx));
            } else {
                call_args.push(quote!(__ctx.clone()));
            }
            continue;
        }
        let Pat::Ident(pat_ident) = &*pat_type.pat else {
            return Err(syn::Error::new(pat_type.pat.span(), "command parameters must be plain names"));
        };
        let param_name = pat_ident.ident.to_string();
        let var = format_ident!("__arg{idx}");
        param_idx += 1;
        let doc = options.param_docs.iter().find(|d| d.name == param_name);
        let description = match doc.map(|d| d.description.as_str()).filter(|d| !d.is_empty()) {
            Some(text) => quote!(::std::option::Option::Some(::std::string::String::from(#text))),
            None => quote!(::std::option::Option::None),
        };
        let allowed = doc.map(|d| d.allowed.clone()).unwrap_or_default();
        params.push(quote! {
            ::clacks_core::command::Param {
                name: ::clacks_core::command::wire_name(#param_name),
                ty: <#ty as ::clacks_core::command::WireType>::TYPE,
                optional: <#ty as ::clacks_core::command::WireType>::OPTIONAL,
                description: #description,
                allowed: ::std::vec![ #(::std::string::String::from(#allowed)),* ],
            }
        });
        decodes.push(quote! {
            let #var: #ty = ::clacks_core::command::decode_argument(
                &__labels[0], &__labels[#param_idx], __args.next().unwrap_or(::serde_json::Value::Null))?;
        });
        call_args.push(quote!(#var));
        documented_names.retain(|name| *name != param_name);
    }
    if let Some(unknown) = documented_names.first() {
        return Err(syn::Error::new(
            method.sig.ident.span(),
            format!("the doc comment of `{rust_name}` describes `{unknown}`, which is not one of its parameters"),
        ));
    }
    let invoke = if method.sig.asyncness.is_some() {
        quote!(__this.#method_ident(#(#call_args),*).await)
    } else {
        quote!(__this.#method_ident(#(#call_args),*))
    };
    let needs_user = options.needs_user;
    let needs_queue = options.needs_queue;
    let idempotent = options.idempotent;
    // The result is described by the handler's return type: what it serializes.
    let returned = match &method.sig.output {
        syn::ReturnType::Type(_, ty) => quote!(#ty),
        syn::ReturnType::Default => quote!(()),
    };

    Ok(quote! {{
        let __plugin = ::std::sync::Arc::clone(&self);
        let __spec = ::clacks_core::command::CommandSpec {
            name: #name_expr,
            target: ::std::string::String::from(#target),
            params: ::std::vec![ #(#params),* ],
            help: ::std::string::String::from(#help),
            needs_user: #needs_user,
            needs_queue: #needs_queue,
            call_type: #call_type,
            result: ::clacks_core::schema::Schema::new(
                &<#returned as ::clacks_core::schema::ResultSchema>::schema()),
            idempotent: #idempotent,
        };
        // The command name, then each parameter name, for argument error messages.
        let __labels: ::std::sync::Arc<[::std::string::String]> = ::std::iter::once(__spec.name.clone())
            .chain(__spec.params.iter().map(|p| p.name.clone()))
            .collect();
        ::clacks_core::command::Command {
            spec: __spec,
            handler: ::std::sync::Arc::new(move |__ctx: ::clacks_core::command::CallContext, __values: ::std::vec::Vec<::serde_json::Value>| {
                let __this = ::std::sync::Arc::clone(&__plugin);
                let __labels = ::std::sync::Arc::clone(&__labels);
                ::std::boxed::Box::pin(async move {
                    let mut __args = __values.into_iter();
                    #(#decodes)*
                    ::clacks_core::command::IntoCommandResult::into_command_result(#invoke)
                })
            }),
        }
    }})
}

fn is_call_context(ty: &Type) -> bool {
    let ty = match ty {
        Type::Reference(r) => &*r.elem,
        other => other,
    };
    matches!(ty, Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "CallContext"))
}

/// Derives `clacks_core::schema::ResultSchema` for a struct with named fields: an
/// object schema whose properties are the fields as serde names them (`rename`,
/// `rename_all = "camelCase"`), described by their doc comments; `Option` fields and
/// fields serde may skip are not required, `flatten`ed ones are merged in.
#[proc_macro_derive(ResultSchema, attributes(serde))]
pub fn derive_result_schema(item: TokenStream) -> TokenStream {
    match expand_result_schema(item.into()) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

/// The `#[serde(…)]` settings a result schema follows.
#[derive(Default)]
struct SerdeSettings {
    rename: Option<String>,
    rename_all: Option<String>,
    flatten: bool,
    skip: bool,
    may_skip: bool,
}

fn serde_settings(attrs: &[syn::Attribute]) -> syn::Result<SerdeSettings> {
    let mut settings = SerdeSettings::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let metas = attr.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)?;
        for meta in metas {
            match &meta {
                Meta::NameValue(nv) if nv.path.is_ident("rename") => settings.rename = Some(string_value(&nv.value)?),
                Meta::NameValue(nv) if nv.path.is_ident("rename_all") => {
                    settings.rename_all = Some(string_value(&nv.value)?);
                }
                Meta::NameValue(nv) if nv.path.is_ident("skip_serializing_if") => settings.may_skip = true,
                Meta::Path(p) if p.is_ident("flatten") => settings.flatten = true,
                Meta::Path(p) if p.is_ident("skip") || p.is_ident("skip_serializing") => settings.skip = true,
                // Settings that do not change what is serialized (default, …).
                _ => {}
            }
        }
    }
    Ok(settings)
}

/// The lines of an item's doc comment, trimmed.
fn doc_lines(attrs: &[syn::Attribute]) -> Vec<String> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            Meta::NameValue(nv) => string_value(&nv.value).ok(),
            _ => None,
        })
        .map(|line| line.trim().to_owned())
        .collect()
}

/// An item's doc comment as one line.
fn doc_text(attrs: &[syn::Attribute]) -> String {
    doc_lines(attrs).join(" ").trim().to_owned()
}

fn expand_result_schema(item: TokenStream2) -> syn::Result<TokenStream2> {
    let input: syn::DeriveInput = syn::parse2(item)?;
    let ident = &input.ident;
    let syn::Data::Struct(syn::DataStruct { fields: syn::Fields::Named(fields), .. }) = &input.data else {
        return Err(syn::Error::new(input.span(), "ResultSchema is derived for structs with named fields"));
    };
    let outer = serde_settings(&input.attrs)?;
    let camel = match outer.rename_all.as_deref() {
        None => false,
        Some("camelCase") => true,
        Some(other) => {
            return Err(syn::Error::new(input.span(), format!("rename_all = \"{other}\" is not supported here")));
        }
    };
    let description = doc_text(&input.attrs);
    let mut properties = Vec::new();
    let mut flattened = Vec::new();
    for field in &fields.named {
        let settings = serde_settings(&field.attrs)?;
        if settings.skip {
            continue;
        }
        let ty = &field.ty;
        if settings.flatten {
            flattened.push(quote!(<#ty as ::clacks_core::schema::ResultSchema>::schema()));
            continue;
        }
        let rust_name = field.ident.as_ref().map(ToString::to_string).unwrap_or_default();
        let rust_name = rust_name.trim_start_matches("r#").to_owned();
        let name = settings.rename.unwrap_or_else(|| if camel { camel_case(&rust_name) } else { rust_name });
        let doc = doc_text(&field.attrs);
        let may_skip = settings.may_skip;
        properties.push(quote! {
            properties.insert(
                ::std::string::String::from(#name),
                ::clacks_core::schema::described(<#ty as ::clacks_core::schema::ResultSchema>::schema(), #doc),
            );
            if !#may_skip && !<#ty as ::clacks_core::schema::ResultSchema>::OPTIONAL {
                required.push(::serde_json::Value::from(#name));
            }
        });
    }
    Ok(quote! {
        impl ::clacks_core::schema::ResultSchema for #ident {
            fn schema() -> ::serde_json::Value {
                let mut properties = ::serde_json::Map::new();
                let mut required: ::std::vec::Vec<::serde_json::Value> = ::std::vec::Vec::new();
                #(#properties)*
                let own = ::clacks_core::schema::described(
                    ::serde_json::json!({"type": "object", "properties": properties, "required": required}),
                    #description,
                );
                let flattened: ::std::vec::Vec<::serde_json::Value> = ::std::vec![ #(#flattened),* ];
                if flattened.is_empty() {
                    own
                } else {
                    ::serde_json::json!({"allOf": flattened.into_iter().chain([own]).collect::<::std::vec::Vec<_>>()})
                }
            }
        }
    })
}

/// `snake_case` → `camelCase`, as serde's `rename_all = "camelCase"` spells fields.
fn camel_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                out.extend(c.to_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}
