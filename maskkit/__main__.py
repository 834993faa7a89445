from maskkit.cli import main

main()
