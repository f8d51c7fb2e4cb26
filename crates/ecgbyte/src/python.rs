use pyo3::prelude::*;
#[pymodule]
fn _ecgbyte(_py: Python, m: &PyModule) -> PyResult<()> {
    m.add("__version__", crate::version())?;
    Ok(())
}
