//! Python bindings for mailsync: the native module `mailsync._native`,
//! re-exported by the `mailsync` package (python/mailsync/).
//!
//! The records and enums are the core's own pyclasses (feature `python` of
//! `mailsync`); this crate adds the error classes (errors.rs), the runtime
//! (runtime.rs), the handle objects with the area methods generated from
//! `mailsync::for_each_operation!` (sync.rs), the sync engine and its sink
//! and outbox adapters (engine.rs) over the calls into Python (host.rs), and the plain
//! functions generated from `mailsync::for_each_function!` (below).

use pyo3::prelude::*;
use pyo3::types::PyType;

mod engine;
mod errors;
pub use errors::class_name as error_class_name;
mod host;
mod runtime;
mod sync;

pyo3_stub_gen::define_stub_info_gatherer!(stub_info);

macro_rules! functions {
    ($($name:ident ($($arg:ident : $ty:ty),*) -> $ret:ty;)*) => {
        $(
            #[pyo3_stub_gen::derive::gen_stub_pyfunction(module = "mailsync")]
            #[pyfunction]
            fn $name($($arg: $ty),*) -> PyResult<$ret> {
                mailsync::ffi::guard(|| mailsync::ffi::api::$name($($arg),*)).map_err(errors::to_py_err)
            }
        )*

        fn add_functions(m: &Bound<'_, PyModule>) -> PyResult<()> {
            $(m.add_function(wrap_pyfunction!($name, m)?)?;)*
            Ok(())
        }
    };
}

mailsync::for_each_function!(functions);

/// The engine's defaults (`EngineOptions::default()`), to change fields of.
// Not in `mailsync::for_each_function!` yet; move it there.
#[pyo3_stub_gen::derive::gen_stub_pyfunction(module = "mailsync")]
#[pyfunction]
fn default_engine_options() -> mailsync::sync::EngineOptions {
    mailsync::sync::EngineOptions::default()
}

/// The constructor (`tp_new`) a class has now, callable as `f(*args,
/// **kwargs)`. The package takes it before it wraps `__new__` (see
/// `__init__.py`): calling `cls.__new__` after that would call the wrapper.
#[pyfunction]
fn _constructor(cls: Bound<'_, PyType>) -> PyResult<Constructor> {
    // SAFETY: `Py_tp_new` of a type object is its `newfunc` (or NULL).
    let slot = unsafe { pyo3::ffi::PyType_GetSlot(cls.as_type_ptr(), pyo3::ffi::Py_tp_new) };
    if slot.is_null() {
        return Err(pyo3::exceptions::PyTypeError::new_err(
            "the class has no constructor",
        ));
    }
    // SAFETY: a non-null `Py_tp_new` slot holds a `newfunc`.
    let new = unsafe { std::mem::transmute::<*mut std::ffi::c_void, pyo3::ffi::newfunc>(slot) };
    Ok(Constructor {
        cls: cls.unbind(),
        new,
    })
}

#[pyclass(frozen)]
struct Constructor {
    cls: Py<PyType>,
    new: pyo3::ffi::newfunc,
}

#[pymethods]
impl Constructor {
    #[pyo3(signature = (*args, **kwargs))]
    fn __call__<'py>(
        &self,
        args: &Bound<'py, pyo3::types::PyTuple>,
        kwargs: Option<&Bound<'py, pyo3::types::PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kwargs = kwargs.map_or(std::ptr::null_mut(), |k| k.as_ptr());
        // SAFETY: the slot function of `cls`, called as `type.__call__` would.
        unsafe {
            let object = (self.new)(self.cls.as_ptr().cast(), args.as_ptr(), kwargs);
            Bound::from_owned_ptr_or_err(args.py(), object)
        }
    }
}

/// mailsync's native extension. Import `mailsync` instead.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.setattr("__version__", env!("CARGO_PKG_VERSION"))?;
    // Before anything can start the runtime: stop it before finalization.
    runtime::register_shutdown(m)?;
    errors::register(m)?;
    macro_rules! classes {
        ($($class:ty),* $(,)?) => { $(m.add_class::<$class>()?;)* };
    }
    mailsync::for_each_record!(classes);
    classes!(
        sync::SealKey,
        sync::StoreLocation,
        sync::Subscription,
        sync::aio::MailSync,
        sync::aio::Directory,
        sync::aio::Connections,
        sync::aio::Checks,
        sync::blocking::MailSync,
        sync::blocking::Directory,
        sync::blocking::Connections,
        sync::blocking::Checks,
        engine::aio::Engine,
        engine::aio::EngineHandle,
        engine::blocking::Engine,
        engine::blocking::EngineHandle,
        engine::RustSinkForTest,
    );
    add_functions(m)?;
    for function in [
        wrap_pyfunction!(errors::error_class, m)?,
        wrap_pyfunction!(default_engine_options, m)?,
        wrap_pyfunction!(errors::_error, m)?,
        wrap_pyfunction!(errors::_panic_for_test, m)?,
        wrap_pyfunction!(_constructor, m)?,
    ] {
        m.add_function(function)?;
    }
    // Importable by name, but kept out of `from mailsync import *`: they
    // would shadow the builtins.
    let all = m.index()?;
    for name in ["TimeoutError", "Warning"] {
        all.call_method1("remove", (name,))?;
    }
    Ok(())
}
