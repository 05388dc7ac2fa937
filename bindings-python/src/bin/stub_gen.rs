//! Writes python/mailsync/_native.pyi (or the path given): the classes and functions as the
//! derives describe them (one module, `mailsync`), plus the error classes
//! built from `ErrorCode::ALL`.

use std::fmt::Write;

use mailsync::ErrorCode;
use pyo3_stub_gen::generate::{MethodDef, Parameter, ParameterDefault, Parameters};
use pyo3_stub_gen::type_info::{MethodType, ParameterKind};
use pyo3_stub_gen::{PyStubType, TypeInfo};

const PY_KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

fn main() -> pyo3_stub_gen::Result<()> {
    let info = mailsync_python::stub_info()?;
    let mut module = info.modules.get("mailsync").cloned().unwrap_or_default();
    for class in module.class.values_mut() {
        // Inventory order (one `impl` per generated method) is not stable.
        class.methods.sort_keys();
        // A field named like a Python keyword (`from`) is no attribute syntax
        // can reach (only `getattr`); leave it out rather than write an
        // invalid stub.
        class
            .getter_setters
            .retain(|name, _| !PY_KEYWORDS.contains(&name.as_str()));
        // The records' `new = "from_fields"` constructor: every field, in
        // order (unless the class has a `#[new]` of its own).
        let fields = &class.getter_setters;
        if !class.methods.contains_key("__new__")
            && !fields.is_empty()
            && fields
                .values()
                .all(|(get, set)| get.is_some() && set.is_some())
        {
            let params = fields
                .values()
                .filter_map(|(_, set)| set.as_ref())
                .map(|set| Parameter {
                    name: set.name,
                    kind: ParameterKind::PositionalOrKeyword,
                    type_info: set.r#type.clone(),
                    default: ParameterDefault::None,
                });
            let parameters = Parameters {
                positional_or_keyword: params.collect(),
                ..Parameters::new()
            };
            let r#return = TypeInfo::unqualified(class.name);
            let new = MethodDef {
                name: "__new__",
                parameters,
                r#return,
                doc: "",
                r#type: MethodType::New,
                is_async: false,
                deprecated: None,
                type_ignored: None,
                is_overload: false,
            };
            class.methods.insert_before(0, "__new__".into(), vec![new]);
        }
    }
    let names: Vec<String> = ErrorCode::ALL
        .iter()
        .map(|c| mailsync_python::error_class_name(*c))
        .collect();
    module.verbatim_all_entries.insert("MailsyncError".into());
    module.verbatim_all_entries.extend(names.iter().cloned());
    for shadowing in ["TimeoutError", "Warning"] {
        module.excluded_all_entries.insert(shadowing.into());
    }
    let mut stub = module.format_with_config(false);
    let code = ErrorCode::type_output().name;
    writeln!(stub, "class MailsyncError(Exception):")?;
    writeln!(stub, "    \"\"\"Base class of every mailsync error.\"\"\"")?;
    for (attr, ty) in [
        ("code", code.as_str()),
        ("message", "builtins.str"),
        ("field", "typing.Optional[builtins.str]"),
        ("transient", "builtins.bool"),
        ("next_action", "builtins.str"),
    ] {
        writeln!(stub, "    {attr}: {ty}")?;
    }
    for (code, name) in ErrorCode::ALL.iter().zip(&names) {
        writeln!(
            stub,
            "\nclass {name}(MailsyncError):\n    \"\"\"Code `{}`: {}\"\"\"",
            code.as_str(),
            code.next_action()
        )?;
    }
    let path = match std::env::args_os().nth(1) {
        Some(path) => path.into(),
        None => {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/mailsync/_native.pyi")
        }
    };
    std::fs::write(&path, stub)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
