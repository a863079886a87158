def linear_multilabel_soft_margin_loss(*args, **kwargs):
    raise NotImplementedError
