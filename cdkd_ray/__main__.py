from cdkd_ray.apps.cli import main

main()
