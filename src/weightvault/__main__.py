from weightvault.cli import main

main()
