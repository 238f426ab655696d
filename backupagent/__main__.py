from backupagent.cli import main

main()
