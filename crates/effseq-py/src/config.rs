//! The run config from Python, in any of the forms the CLI reads: a dict (the sections `model`, `task`, `train` as in
//! a config file), the text of a TOML or JSON file, or a path to one (`pathlib.Path` or any `os.PathLike`).

use std::path::PathBuf;

use effseq::config::RunConfig;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::arrays::type_name;
use crate::{error, to_py_err, ErrorKind};

/// The validated run config `obj` describes (`None`: the defaults), with the defaults that depend on the task's
/// sequence length filled in as `effseq train` fills them (a TCN's levels).
pub(crate) fn run_config(py: Python<'_>, obj: Option<&Bound<'_, PyAny>>) -> PyResult<RunConfig> {
    let config_error = |msg: String| error(py, ErrorKind::Config, format!("invalid config: {msg}"));
    let mut cfg: RunConfig = match obj.filter(|o| !o.is_none()) {
        None => RunConfig::default(),
        Some(o) if o.is_instance_of::<PyDict>() => {
            let text: String = py.import("json")?.call_method1("dumps", (o,))?.extract()?;
            serde_json::from_str(&text).map_err(|e| config_error(e.to_string()))?
        }
        Some(o) if o.is_instance_of::<PyString>() => {
            let text: String = o.extract()?;
            if text.trim_start().starts_with('{') {
                serde_json::from_str(&text).map_err(|e| config_error(format!("JSON line {}, column {}: {e}", e.line(), e.column())))?
            } else {
                toml::from_str(&text).map_err(|e| config_error(format!("TOML: {e}")))?
            }
        }
        Some(o) if o.hasattr("__fspath__")? => {
            let path: PathBuf = o.extract()?;
            RunConfig::from_file(&path).map_err(|e| to_py_err(py, e))?
        }
        Some(o) => {
            return Err(error(
                py,
                ErrorKind::Config,
                format!("config must be a dict, the text of a TOML or JSON config, or a pathlib.Path to a config file; got {}", type_name(o)),
            ))
        }
    };
    cfg.validate().map_err(|e| to_py_err(py, e))?;
    let steps = cfg.task.steps_per_sequence();
    cfg.model.resolve_for_run(cfg.task.kind, steps);
    Ok(cfg)
}

/// A serde value as a Python object (through JSON: dicts, lists, numbers, strings, None).
pub(crate) fn to_python<'py>(py: Python<'py>, value: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value).map_err(|e| error(py, ErrorKind::Other, format!("cannot convert to Python: {e}")))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// The complete config `config` describes, every default filled in, as a dict (the form `config.toml` of a
/// checkpoint records). Raises ConfigError for an unknown field or a value out of range.
#[pyfunction]
#[pyo3(signature = (config = None))]
fn resolve_config<'py>(py: Python<'py>, config: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    to_python(py, &run_config(py, config)?)
}

/// The TOML text of a config (what a checkpoint's config.toml holds; `effseq train --config FILE` reads it).
#[pyfunction]
#[pyo3(signature = (config = None))]
fn config_toml(py: Python<'_>, config: Option<&Bound<'_, PyAny>>) -> PyResult<String> {
    Ok(run_config(py, config)?.to_toml())
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(resolve_config, m)?)?;
    m.add_function(wrap_pyfunction!(config_toml, m)?)?;
    Ok(())
}
