fn main() -> std::process::ExitCode {
    model_server::cli::main::<mednext_svc::Mednext>()
}
