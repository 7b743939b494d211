fn main() -> std::process::ExitCode {
    model_server::cli::main::<ctclip_svc::Ctclip>()
}
