fn main() -> std::process::ExitCode {
    model_server::cli::main::<fvlm_svc::Fvlm>()
}
