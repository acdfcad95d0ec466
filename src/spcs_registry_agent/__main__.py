from spcs_registry_agent.cli import main

main()
